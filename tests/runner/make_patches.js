// Makes diff-match-patch patches the way the IDE page's editor does
// (diff_main, patch_make, patch_toText): reads [[before, after], ...] as JSON
// on stdin, writes the patch texts as a JSON list on stdout.
const { diff_match_patch } = require("diff-match-patch");
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const dmp = new diff_match_patch();
  const out = JSON.parse(input).map(([before, after]) => {
    const diffs = dmp.diff_main(before, after);
    return dmp.patch_toText(dmp.patch_make(before, diffs));
  });
  process.stdout.write(JSON.stringify(out));
});
