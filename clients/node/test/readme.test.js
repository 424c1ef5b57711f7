"use strict";
// The README's JavaScript examples type-check against index.d.ts under `tsc --strict`, as a
// TypeScript (or checkJs) user would compile them: an example that only runs is not enough.
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { test } = require("node:test");

const PACKAGE = path.resolve(__dirname, "..");
const TSC = path.join(path.dirname(require.resolve("typescript/package.json")), "bin", "tsc");
const REQUIRE = /const (\{[^}]*\}) = require\("isorun"\);/g;

/** Every ```js block of the README, as an ES module: `import` instead of `require` (the form the
 * README offers beside it), since a module may use top-level `await` as the examples do. */
function readmeExamples() {
  const readme = fs.readFileSync(path.join(PACKAGE, "README.md"), "utf8");
  return [...readme.matchAll(/```js\n(.*?)```/gs)].map(([, code]) => code.replace(REQUIRE, 'import $1 from "isorun";'));
}

/** A project that type-checks `files` strictly, with "isorun" resolved to this index.d.ts. */
function writeProject(folder, files) {
  for (const [name, code] of Object.entries(files)) fs.writeFileSync(path.join(folder, name), code);
  fs.writeFileSync(path.join(folder, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      strict: true, allowJs: true, checkJs: true, noEmit: true, module: "nodenext", target: "es2022",
      paths: { isorun: [path.join(PACKAGE, "index.d.ts")] },
      typeRoots: [path.join(PACKAGE, "node_modules", "@types")], types: ["node"],
    },
    include: Object.keys(files),
  }));
}

test("the README's examples type-check against index.d.ts under tsc --strict", () => {
  const examples = readmeExamples();
  assert.ok(examples.length >= 2, "the README has lost its examples");
  for (const code of examples) assert.ok(!code.includes("require("), `an example this test cannot convert:\n${code}`);
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), "isorun-readme-"));
  try {
    writeProject(folder, Object.fromEntries(examples.map((code, i) => [`example-${i}.mjs`, code])));
    try {
      execFileSync(process.execPath, [TSC, "-p", folder], { encoding: "utf8" });
    } catch (e) {
      assert.fail(`tsc --strict found errors in the README's examples:\n${e.stdout}${e.stderr}`);
    }
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
});
