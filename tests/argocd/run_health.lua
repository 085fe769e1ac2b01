-- Runs an Argo CD health script as Argo CD does: the resource is the global `obj` (a table), the script
-- returns {status = ..., message = ...}, and it sees only the base functions and the string, table and
-- math libraries (no io or os).
-- Usage: lua5.4 run_health.lua HEALTH_LUA < OBJECT   (OBJECT: the resource as a Lua table constructor)
-- Prints the status on the first line and the message after it.
local script = arg[1]
local object = assert(load("return " .. io.read("*a"), "=object", "t", {}))()
local env = {
  obj = object, assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type,
  string = string, table = table, math = math,
}
local hs = assert(loadfile(script, "t", env))()
local statuses = {Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true,
                  Unknown = true}
if type(hs) ~= "table" or not statuses[hs.status] then
  error("health script returned no valid status: " .. tostring(type(hs) == "table" and hs.status or hs))
end
if hs.message ~= nil and type(hs.message) ~= "string" then
  error("health script returned a message that is not a string: " .. tostring(hs.message))
end
io.write(hs.status, "\n", hs.message or "")
