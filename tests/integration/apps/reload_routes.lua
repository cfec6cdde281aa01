-- reload_routes: placeholder; test_reload.py writes its own version of this
-- file (answering {"v": N}) into the tempdir before starting devexd.
return function(app)
  app:get("/v", function() return 200, { v = 0 } end)
end
