-- policy.magiclink: who may sign in with an e-mail magic link.
--   allow(address) -> true to send the link to the (normalised: trimmed,
--   lower-cased) address. Anything else sends nothing, and the answer is the
--   same 200 as for a sent link (no enumeration). Default: every address.
-- Example (the operator's policy file):
--   return { magiclink = { allow = function(a) return a:match("@company%.com$") ~= nil end } }
return {
  allow = function(address) return true end, -- luacheck: ignore 212
}
