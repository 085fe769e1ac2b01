-- Argo CD health of a modelops.dev TrainingJob.
-- The operator keeps status.phase (Pending, Running, Succeeded, Failed, Suspended), kstatus-style
-- conditions (Ready, Reconciling, Stalled, and one per phase) and status.observedGeneration.
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
  hs.message = "Waiting for the operator to report the TrainingJob's status"
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

local phase = status.phase
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(find(conditions, "Failed"), "The TrainingJob failed")
  return hs
end

-- The operator cannot act on the job (an invalid spec, a child it may not write): Stalled.
local stalled = find(conditions, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = explain(stalled, "The operator cannot reconcile the TrainingJob")
  return hs
end

if phase == "Succeeded" or is_true(ready) then
  hs.status = "Healthy"
  hs.message = explain(ready, "The TrainingJob succeeded")
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = explain(find(conditions, "Suspended"), "The TrainingJob is suspended")
  return hs
end

-- Pending or Running: the job is on its way. Say why it waits, or how far it got, and whether an
-- edit was refused while the group runs (it takes effect when the group next starts).
hs.status = "Progressing"
local refused = find(conditions, "UpdateRefused")
if is_true(refused) then
  hs.message = explain(refused, "An edit of the running workers was refused")
elseif phase == "Running" then
  hs.message = explain(find(conditions, "Running"), "Running")
  if status.progressSummary ~= nil and status.progressSummary ~= "" then
    hs.message = hs.message .. "; " .. status.progressSummary
  end
else
  hs.message = explain(ready, "Waiting for the workers")
end
return hs
