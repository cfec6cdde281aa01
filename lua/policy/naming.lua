-- policy.naming: REPL ids and the names users may give their REPLs.
--   new_id()       a fresh REPL id; the default "repl-<uuid>" is a valid
--                  Kubernetes object name (DNS-1123 label, 41 characters)
--   name_min, name_max  length of a REPL name, in characters
--   name_pattern   a Lua pattern every name must match (anchored)
--   id_pattern     what a REPL id in a URL must look like before it is used
--                  in a Redis key, an S3 key or a Kubernetes name
local crypto = require("devex.crypto")

return {
  new_id = function() return "repl-" .. crypto.uuid4() end,
  id_pattern = "^repl%-[0-9a-f%-]+$",
  id_max = 63,
  name_min = 1,
  name_max = 64,
  name_pattern = "^[%w][%w _%.%-]*$",
}
