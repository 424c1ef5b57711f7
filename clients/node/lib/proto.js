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
const protobuf = require("protobufjs");

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
    const methods = definition["isorun.v1.Runner"];
    const types = messageTypes(dir);
    methods.Run.responseDeserialize = keepingTheResultAsMessage(types.lookupType("isorun.v1.RunResponse"));
    methods.RunStream.responseDeserialize = keepingTheResultAsMessage(types.lookupType("isorun.v1.RunEvent"));
    const runner = grpc.loadPackageDefinition(definition).isorun.v1.Runner;
    loaded = { Runner: runner, dir };
  }
  return loaded;
}

/** The contract's message types as protobufjs reads them (google/protobuf/struct.proto is
 * protobufjs's own copy, as for proto-loader). */
function messageTypes(dir) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(dir, target);
  root.loadSync(CONTRACT, { keepCase: LOADER_OPTIONS.keepCase });
  root.resolveAll();
  return root;
}

/**
 * A response's deserializer, as proto-loader's (the object form of LOADER_OPTIONS) but for the
 * outcome's result, which stays the decoded google.protobuf.Value message: decode.js reads it
 * as it reads the object form (`kind`, `numberValue`, `listValue.values`, `structValue.fields`).
 * A result of millions of small items then costs one object each before it is rebuilt, not
 * two at once (the message and its object form): 4,000,000 nulls peaked at 622 MiB of RSS.
 */
function keepingTheResultAsMessage(type) {
  return (buffer) => {
    let message;
    try {
      message = type.decode(buffer);
    } catch (e) {
      return unreadableAnswer(e);
    }
    const outcome = message.outcome;
    const value = outcome ? outcome.value : null;
    if (value) outcome.value = null; // left out of the object form ...
    const object = type.toObject(message, LOADER_OPTIONS);
    if (value) { // ... and put back as it was decoded
      object.outcome.value = value;
      object.outcome.result = "value";
    }
    return object;
  };
}

/**
 * What an answer that does not decode stands for: a SANDBOX failure of that call. isorund
 * relays a result as the sandbox encoded it, so a guest that wrote to its channel itself can
 * send one that is not a valid google.protobuf.Value (grpc-js would make it an INTERNAL error).
 * The object has the shape of both answers: a RunResponse and a RunEvent holding an outcome.
 */
function unreadableAnswer(error) {
  const message = `isorund's answer could not be read (${error.message}): the call's sandbox sent a ` +
    "result that is not a valid google.protobuf.Value, which its runtime never sends";
  const outcome = { result: "failure", failure: { kind: "SANDBOX", message } };
  return { event: "outcome", outcome, console: [] };
}

module.exports = { load, CANDIDATES, CONTRACT };
