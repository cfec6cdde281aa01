-- policy.messages: the sentences a user reads when a session start fails
-- (GET /api/repl/session/<id>: `message` beside `code`; the event stream's
-- `failed` event), by the stable code (lua/repl/events.lua, README "Session
-- events"). Reword them in the policy file, e.g.
--   return { messages = { image_pull = "Image %s is missing: tell #platform." } }
-- %s stands for the fields named in each comment, in that order; a sentence
-- with fewer %s leaves the rest out.
return {
  -- image_pull: the image
  image_pull = "The workspace image %s could not be downloaded. Ask your administrator to check the template's image.",
  -- quota: the sessions in use, the limit
  quota = "You have %s of %s workspaces running, the most allowed. Stop one to start this one.",
  -- capacity: the scheduler's reason
  capacity = "There is no room in the cluster for your workspace right now (%s). Try again in a few minutes.",
  start_timeout = "Your workspace took too long to start. Try again; if it keeps happening, tell your administrator.",
  restore_failed = "Your files could not be restored into the workspace. Nothing was changed; try again.",
  storage_down = "File storage is not reachable right now, so your workspace cannot start. Try again in a few minutes.",
  kubernetes_down = "The workspace cluster is not reachable right now. Try again in a few minutes.",
  crashed = "Your workspace started but then stopped working. Try again; if it keeps happening, tell your administrator.",
  store_down = "The service is having trouble right now. Try again in a few minutes.",
  -- warning_idle, warning_lifetime (the `warning` event before a stop): the seconds left
  warning_idle = "Your workspace has been idle and will stop in %s seconds to save resources. Keep working to keep it.",
  warning_lifetime = "Your workspace reaches its maximum running time and will stop in %s seconds. Your files are saved.",
  start_failed = "Your workspace could not be started. Try again; if it keeps happening, tell your administrator.",
}
