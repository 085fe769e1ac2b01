-- Argo CD health of a modelops.dev ModelService.
-- The operator keeps status.phase (Pending, Progressing, Ready, Degraded), kstatus-style conditions
-- (Ready: some replica serves a verified model; Progressing: a canary is rolling out; Reconciling;
-- Stalled; RolledBack) and status.observedGeneration.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message" of a condition (the message alone when it names the reason), or the fallback
-- when the condition says nothing.
local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  local reason, message = c.reason or "", c.message or ""
  if reason ~= "" and message ~= "" then
    if string.find(message, reason, 1, true) then
      return message
    end
    return reason .. ": " .. message
  end
  if reason .. message ~= "" then
    return reason .. message
  end
  return fallback
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the ModelService's status"
  return hs
end

local conditions = status.conditions
local ready = find(conditions, "Ready")
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration ~= generation or
    (ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration ~= generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (the status describes generation " .. status.observedGeneration .. ")"
  return hs
end

-- A rolled-back canary (while the spec still asks for the rejected revision), a model that fails its
-- check, or a child the operator may not write: Stalled, and the stable revision (if any) keeps serving.
local rolled_back = find(conditions, "RolledBack")
local stalled = find(conditions, "Stalled")
if is_true(rolled_back) then
  hs.status = "Degraded"
  hs.message = explain(rolled_back, "The canary was rolled back")
  return hs
end
if is_true(stalled) or status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = explain(stalled, "The ModelService is degraded")
  return hs
end

local canary = find(conditions, "Progressing")
-- A rollout step that waits for `kubectl annotate ms NAME modelops.dev/rollout=promote` (as Argo Rollouts'
-- paused rollouts are): nothing moves until a person acts.
if canary ~= nil and canary.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = explain(canary, "The canary waits for approval")
  return hs
end
if status.canary ~= nil or is_true(canary) then
  hs.status = "Progressing"
  local summary = status.canarySummary
  if summary == nil or summary == "" then
    summary = "canary"
  end
  hs.message = "Rolling out " .. summary
  if canary ~= nil and canary.message ~= nil and canary.message ~= "" then
    hs.message = hs.message .. ": " .. canary.message
  end
  return hs
end

if status.phase == "Ready" and status.replicas == 0 then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end

if status.phase == "Ready" and is_true(ready) then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

-- Pending or Progressing: no revision yet, or replicas not serving yet.
hs.status = "Progressing"
local reconciling = find(conditions, "Reconciling")
local doing = ""
if reconciling ~= nil and reconciling.message ~= nil then
  doing = reconciling.message
end
if status.stable == nil then
  -- no revision yet: e.g. waiting for the followed TrainingJob to publish a model
  hs.message = doing
  if doing == "" then
    hs.message = "Waiting for a model version to serve"
  end
else
  hs.message = "Waiting for serving replicas: " .. (status.ready or "0") .. " ready"
  if doing ~= "" then
    hs.message = hs.message .. " (" .. doing .. ")"
  end
end
return hs
