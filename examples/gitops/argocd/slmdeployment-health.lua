-- Argo CD health check for slm.dev/SLMDeployment.
--
-- Argo CD runs this with the live object in the global `obj` and expects a table
-- { status = "Healthy" | "Progressing" | "Degraded", message = "..." }.
-- Argo CD embeds gopher-lua (Lua 5.1) and opens no standard library but base and table
-- for health checks, so this uses neither string.* nor anything newer than 5.1 (tested in
-- tests/chart/test_argocd_health.py with bin/argocd-lua, the same VM).
--
--   Progressing  the operator has not yet observed metadata.generation (status.observedGeneration
--                missing or older), or Ready is not True yet while Progressing is True, Unknown
--                or missing;
--   Degraded     Degraded=True, or Ready=False with nothing in progress;
--   Healthy      Ready=True for the current generation.

local hs = { status = "Progressing", message = "Waiting for the slm-operator to reconcile" }

local function find_condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition ~= nil and condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

local status = obj.status
if status == nil then
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the slm-operator to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (observed " .. tostring(observed) .. ")"
  end
  return hs
end

local ready = find_condition(status.conditions, "Ready")
local progressing = find_condition(status.conditions, "Progressing")
local degraded = find_condition(status.conditions, "Degraded")

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local message = describe(ready, "Ready")
  if status.readyReplicas ~= nil and status.replicas ~= nil then
    message = message .. " (" .. tostring(status.readyReplicas) .. "/" .. tostring(status.replicas) .. " replicas ready)"
  end
  hs.message = message
  return hs
end

if ready ~= nil and ready.status == "False" and (progressing == nil or progressing.status == "False") then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready and not progressing")
  return hs
end

hs.message = describe(progressing, describe(ready, hs.message))
return hs
