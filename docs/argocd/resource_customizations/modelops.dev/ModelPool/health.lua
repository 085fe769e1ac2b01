-- Argo CD health of a modelops.dev ModelPool.
-- The operator keeps status.phase (Progressing, Ready, Degraded), kstatus-style conditions (Ready: every
-- server answers and every copy asked for is placed; Reconciling; Stalled: a copy cannot be placed),
-- status.observedGeneration, and status.replicas (server pods).
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

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the ModelPool's status"
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

-- A copy that cannot be placed (too large, no room at maxServers, failed to load, a model name taken):
-- the servers keep serving what they hold.
local stalled = find(conditions, "Stalled")
if is_true(stalled) or status.phase == "Degraded" then
  hs.status = "Degraded"
  local message = ""
  if stalled ~= nil and stalled.message ~= nil then
    message = stalled.message
  end
  if message == "" then
    message = "The ModelPool is degraded"
  end
  hs.message = message
  return hs
end

if status.phase == "Ready" and is_true(ready) and (status.replicas or 0) == 0 then
  hs.status = "Suspended"
  hs.message = "No servers: minServers is 0 and no copy is asked for"
  return hs
end

if status.phase == "Ready" and is_true(ready) then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

hs.status = "Progressing"
local reconciling = find(conditions, "Reconciling")
if reconciling ~= nil and reconciling.message ~= nil and reconciling.message ~= "" then
  hs.message = reconciling.message
else
  hs.message = "Servers " .. (status.serversReady or "0/0") .. " ready"
end
return hs
