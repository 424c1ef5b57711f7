"use strict";
/**
 * Loads the wire contract (isorun/v1/runner.proto) with @grpc/proto-loader, once, on first use.
 *
 * The .proto files are read, never copied into this package's source: a published package
 * carries the copy that `npm pack` bundles into ./proto (scripts/bundle-proto.js, removed again
 * after packing), and a checkout of the repository reads the contract itself at ../../proto.
 * The bundled copy wins, so an installed package never reads some unrelated folder above it.
 */
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const CANDIDATES = [
  path.join(__dirname, "..", "proto"), // bundled by `npm pack`
  path.join(__dirname, "..", "..", "..", "proto"), // the repository's proto/
];
const CONTRACT = path.join("isorun", "v1", "runner.proto");

// Field names in camelCase (funcName), enums as their names ("GUEST_EXCEPTION"), 64-bit
// integers as strings (they may pass 2**53), and `kind`/`event` naming the oneof member set.
const LOADER_OPTIONS = {
  keepCase: false, longs: String, enums: String, defaults: false, arrays: true, oneofs: true,
};

let loaded = null;

/** { Runner: the service client constructor, dir: where the contract was read from }. */
function load() {
  if (loaded === null) {
    const dir = CANDIDATES.find((candidate) => fs.existsSync(path.join(candidate, CONTRACT)));
    if (dir === undefined) {
      throw new Error(`isorun: cannot find ${CONTRACT} in ${CANDIDATES.join(" or ")}; ` +
        "a packed isorun carries it in ./proto (see README.md, 'Packaging')");
    }
    const definition = protoLoader.loadSync(CONTRACT, { ...LOADER_OPTIONS, includeDirs: [dir] });
    const runner = grpc.loadPackageDefinition(definition).isorun.v1.Runner;
    loaded = { Runner: runner, dir };
  }
  return loaded;
}

module.exports = { load, CANDIDATES, CONTRACT };
