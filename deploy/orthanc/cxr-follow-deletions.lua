-- cxr-follow-deletions.lua: tells `cxr index follow --deletions-listen` of every resource Orthanc
-- deletes, so that a deleted image leaves the search index within a second rather than at the
-- follower's next reconciliation.
--
-- Install (Orthanc 1.6 or later): set the two values below, then add this file to Orthanc's
-- configuration and restart Orthanc:
--     "LuaScripts" : [ "/etc/orthanc/cxr-follow-deletions.lua" ]
-- and start the follower with the same address and token:
--     CXR_DELETION_NOTICES_TOKEN=... cxr index follow --dicomweb http://orthanc:8042/dicom-web \
--         --deletions-listen 127.0.0.1:8099
--
-- Orthanc calls OnDeletedInstance for every instance a deletion removes (an instance's, a series',
-- a study's or a patient's), and OnDeletedSeries/Study/Patient for each of those gone; each is posted
-- as {"ResourceType": ..., "ID": <Orthanc id>}. Orthanc runs its Lua callbacks one at a time on a
-- thread of their own as it answers the deletion: a post blocks that thread (and any other Lua
-- callback) until the follower answers. The follower answers at once, and a follower that is
-- stopped refuses the connection at once; one that hangs holds each post for HTTP_TIMEOUT_S where
-- Orthanc's Lua has SetHttpTimeout, else for Orthanc's "HttpTimeout" setting (60 s; Orthanc 1.10 has
-- no SetHttpTimeout). A notice that cannot be delivered (follower stopped, token refused) is logged by
-- Orthanc and not sent again; the follower finds that deletion by reconciling with Orthanc (its count
-- of instances falls short).

local FOLLOWER_URL = 'http://127.0.0.1:8099/deletions'
local TOKEN = ''  -- the follower's deletion_notices_token (CXR_DELETION_NOTICES_TOKEN); '' for none
local HTTP_TIMEOUT_S = 2  -- applies to every HttpGet/HttpPost of Orthanc's Lua scripts

if SetHttpTimeout ~= nil then
  SetHttpTimeout(HTTP_TIMEOUT_S)
end

local function notify(resourceType, id)
  local headers = { ['Content-Type'] = 'application/json' }
  if TOKEN ~= '' then
    headers['Authorization'] = 'Bearer ' .. TOKEN
  end
  local body = '{"ResourceType":"' .. resourceType .. '","ID":"' .. id .. '"}'
  local answer = HttpPost(FOLLOWER_URL, body, headers)
  -- HttpPost answers nil when the follower cannot be reached, and '' when it refused the notice.
  if answer == nil or not string.find(answer, '"queued"', 1, true) then
    print('cxr-follow-deletions: ' .. FOLLOWER_URL .. ' did not take the deletion of ' .. resourceType .. ' '
          .. id .. '; the follower will find it by reconciling')
  end
end

-- Callbacks of the same name defined by a script loaded before this one are still called; list this
-- script last in "LuaScripts", since one loaded after it that defines them would replace these.
local function chained(previous, resourceType)
  return function(id)
    if previous ~= nil then
      previous(id)
    end
    notify(resourceType, id)
  end
end

OnDeletedInstance = chained(OnDeletedInstance, 'Instance')
OnDeletedSeries = chained(OnDeletedSeries, 'Series')
OnDeletedStudy = chained(OnDeletedStudy, 'Study')
OnDeletedPatient = chained(OnDeletedPatient, 'Patient')
