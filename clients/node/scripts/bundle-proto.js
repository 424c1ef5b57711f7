"use strict";
/**
 * `npm pack` / `npm publish` hooks. prepack copies the repository's proto/ (the wire contract,
 * its single source of truth) into ./proto so that the packed package carries it; postpack
 * (`--remove`) deletes the copy again, so that a checkout keeps reading ../../proto and never a
 * stale copy. ./proto is git-ignored.
 */
const fs = require("fs");
const path = require("path");

const source = path.join(__dirname, "..", "..", "..", "proto");
const target = path.join(__dirname, "..", "proto");

fs.rmSync(target, { recursive: true, force: true });
if (!process.argv.includes("--remove")) {
  if (!fs.existsSync(path.join(source, "isorun", "v1", "runner.proto"))) {
    console.error(`bundle-proto: no isorun/v1/runner.proto under ${source}; pack from the repository`);
    process.exit(1);
  }
  fs.cpSync(source, target, { recursive: true, filter: (p) => fs.statSync(p).isDirectory() || p.endsWith(".proto") });
  console.error(`bundle-proto: copied ${source} to ${target}`);
}
