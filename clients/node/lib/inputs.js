"use strict";
/**
 * What a runner's options and a call's inputs must be, checked before anything is built or
 * sent (as the Python client's _inputs.py): a wrong type or a misspelt option is refused with
 * InvalidRequest (SerializationError for resolverOptions) naming the option and what it got,
 * rather than dropped, taken apart into something the caller did not mean, or failing deep in
 * grpc-js; resolverOptions are turned into the Struct the request carries. Apart from
 * client.js, which holds the calls themselves, so that these rules read as one list.
 */
const errors = require("./errors");
const { isPlainObject, short, typeName } = require("./codec");

// sun_path holds 108 bytes with its terminating NUL; a longer path is cut short by the kernel.
const MAX_SOCKET_PATH_BYTES = 107;

/** Why no daemon can be reached at `socket` (an absolute path) whatever runs there, or null. */
function socketProblem(socket) {
  const size = Buffer.byteLength(socket);
  if (size <= MAX_SOCKET_PATH_BYTES) return null;
  return `no isorun daemon can be reached at ${socket}: a Unix socket path holds at most ` +
    `${MAX_SOCKET_PATH_BYTES} bytes and this one has ${size}; use a shorter path (a symbolic link to the socket will do)`;
}

/** A run()'s `signal` must be an AbortSignal: anything else would be ignored, and the call
 * could then not be aborted as its caller meant. */
function abortable(signal) {
  if (signal !== undefined && signal !== null && !(signal instanceof AbortSignal)) {
    throw new errors.InvalidRequest(`signal must be an AbortSignal, got ${typeName(signal)}`);
  }
}

/** Plugins run on the daemon, in Python: a JavaScript function cannot be one. */
function pluginName(option, value) {
  if (value === undefined || value === null || value === "") return "";
  if (typeof value !== "string") {
    throw new errors.InvalidRequest(`${option} must be the name of a plugin registered in the ` +
      `daemon's config (a string), got ${typeof value}: isorun runs no host JavaScript in the sandbox`);
  }
  return wellFormed(option, value);
}

const RUNNER_OPTIONS = ["root", "file", "external", "whitelistedPaths", "sourceExtensions", "compiler",
  "resolver", "resolverOptions", "onConsole", "socket", "registry"];
const RUN_OPTIONS = ["funcName", "args", "context", "running", "timeout", "argsResolver", "limits", "signal"];
// The daemon's limits a call may lower for itself, as the proto's Limits names them (camelCase).
const LIMITS = ["memoryBytes", "maxProcesses", "maxOpenFiles", "maxFileBytes", "outputBytes", "resultBytes",
  "cpuSeconds", "tmpBytes"];

// isolated-runtime's options that isorun names otherwise: code moved over would have them
// ignored, and its guest would then fail far from the cause.
const RENAMED = {
  resolve: "isolated-runtime's resolve function is `resolver` here: the name of a resolver plugin in the daemon's config",
  resolveArguments: "isolated-runtime's resolveArguments function is the run() option `argsResolver` here: " +
    "the name of an args-resolver plugin in the daemon's config",
};

/** A misspelt option would otherwise be dropped without a word (`timout: 100` runs with the
 * daemon's default timeout), so options are checked by name, as Python checks keywords. */
function knownOptions(what, options, known) {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new errors.InvalidRequest(`${what} options must be an object, got ${typeName(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new errors.InvalidRequest(`unknown ${what} option '${key}': ${RENAMED[key] || `known are ${known.join(", ")}`}`);
    }
  }
  return options;
}

function stringList(option, value) {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) {
    throw new errors.InvalidRequest(`${option} must be an array of strings`);
  }
  value.forEach((item, i) => wellFormed(`${option}[${i}]`, item));
  return value;
}

/** isolated-runtime took extensions without the dot ("jx"); isorun's daemon wants ".jx". An
 * empty one became "." (which the daemon took as an extension, and named in errors where the
 * user wrote ""), so each must be a dot and at least one character once the dot is added. */
function sourceExtensionList(value) {
  return stringList("sourceExtensions", value).map((ext, i) => {
    if (ext === "" || ext === ".") {
      throw new errors.InvalidRequest(`sourceExtensions[${i}] must look like '.py' (a dot and at least one ` +
        `character), got ${JSON.stringify(ext)}`);
    }
    return ext.startsWith(".") ? ext : `.${ext}`;
  });
}

/** A lone surrogate cannot travel in a protobuf string: grpc-js sent it as bad UTF-8, and the
 * daemon's refusal ("String field had bad UTF-8") named no option. */
function wellFormed(option, text) {
  if (!text.isWellFormed()) {
    const at = [...text].findIndex((c) => !c.isWellFormed());
    throw new errors.InvalidRequest(`${option} holds a lone surrogate (at code point ${at}), which is not ` +
      "valid Unicode; requests carry UTF-8 text only");
  }
  return text;
}

/**
 * resolverOptions are plain JSON handed to the resolver plugin as a dict: a Struct, as is.
 * What JSON.stringify would quietly change (a Map to {}, NaN to null, a Date to a string, a
 * function dropped) is refused naming its place, as the Python client does; a key whose
 * value is undefined is left out, as JSON leaves it.
 */
function optionsStruct(options) {
  if (!isPlainObject(options)) {
    throw new errors.SerializationError("resolverOptions must be a JSON-like object (a plain object of JSON values), " +
      `got ${typeName(options)}`);
  }
  return jsonValue(jsonOnly(options, "resolverOptions", 0)).structValue;
}

// The deepest protobuf level resolverOptions may reach: protobuf's parser in the sandbox (upb)
// takes the request plus 100 levels, and the options' Struct is a field of the request itself.
// Levels count as the codec counts a value's (docs/values.md section 7), the options being at
// level 0: an object's values are 3 levels down (Struct, map entry, Value), an array's items 2
// (ListValue, Value), an empty object or array adds 1. Counted in JSON levels (up to 100),
// deeper options were sent, and the sandbox refused the request: InvalidRequest, "Exceeded
// upb_DecodeOptions_MaxDepth", naming no place. As the Python client's _inputs.py.
const MAX_OPTIONS_DEPTH = 100;
const OPTIONS_TOO_DEEP_WHY = `more than ${MAX_OPTIONS_DEPTH} protobuf levels (limit 'depth'), the most ` +
  `protobuf's parser takes; that is more than ${Math.floor(MAX_OPTIONS_DEPTH / 3)} objects around a value, the ` +
  `options' own included, or ${Math.floor((MAX_OPTIONS_DEPTH - 3) / 2)} arrays in one of their entries (one more ` +
  "when the innermost is empty)";

function withinDepth(where, level) {
  if (level > MAX_OPTIONS_DEPTH) {
    throw new errors.SerializationError(`${where} is nested too deeply: ${OPTIONS_TOO_DEEP_WHY}`, "depth");
  }
}

/** ``value`` as plain JSON, or a SerializationError naming the first part that is not; `level`
 * is its protobuf level (see MAX_OPTIONS_DEPTH), checked before its items are looked at, so
 * that an object that contains itself ends too. */
function jsonOnly(value, where, level) {
  if (typeof value === "string" && !value.isWellFormed()) {
    throw new errors.SerializationError(`${where} holds a lone surrogate, which is not valid Unicode`);
  }
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (Number.isFinite(value)) return value;
    throw new errors.SerializationError(`${where} is ${value}, which JSON has no form for`);
  }
  if (Array.isArray(value)) {
    withinDepth(where, level + (value.length ? 2 : 1));
    return value.map((item, i) => jsonOnly(item, `${where}[${i}]`, level + 2));
  }
  if (isPlainObject(value)) {
    const out = {};
    const entries = Object.entries(value);
    // (an entry holding undefined is left out, as JSON leaves it out: it adds no level)
    withinDepth(where, level + (entries.some(([, item]) => item !== undefined) ? 3 : 1));
    for (const [key, item] of entries) {
      if (!key.isWellFormed()) {
        throw new errors.SerializationError(`${where} has a key holding a lone surrogate, which is not valid Unicode`);
      }
      if (item !== undefined) out[key] = jsonOnly(item, `${where}[${JSON.stringify(key)}]`, level + 3);
    }
    return out;
  }
  throw new errors.SerializationError(`${where} is of type ${typeName(value)}; resolverOptions hold only JSON values ` +
    "(null, boolean, number, string, array, plain object)");
}

/** A call's `limits`: names of the daemon's limits to numbers, each at most the daemon's own
 * (the daemon refuses more); 0 or a name left out keeps the daemon's. */
function callLimits(limits) {
  if (limits === undefined || limits === null) return null;
  if (!isPlainObject(limits)) {
    throw new errors.InvalidRequest(`limits must be a plain object of limit names to numbers, got ${typeName(limits)}`);
  }
  const checked = {};
  for (const [name, value] of Object.entries(limits)) {
    if (!LIMITS.includes(name)) {
      throw new errors.InvalidRequest(`unknown limit '${name}'; known are ${[...LIMITS].sort().join(", ")}`);
    }
    const whole = name !== "cpuSeconds";
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (whole && !Number.isSafeInteger(value))) {
      throw new errors.InvalidRequest(`limits.${name} must be ${whole ? "a whole number" : "a number of seconds"} ` +
        `>= 0, got ${short(value)}`);
    }
    checked[name] = value;
  }
  return checked;
}

function jsonValue(json) {
  if (json === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(json)) return { listValue: { values: json.map(jsonValue) } };
  switch (typeof json) {
    case "object": {
      const fields = Object.create(null);
      for (const [key, item] of Object.entries(json)) fields[key] = jsonValue(item);
      return { structValue: { fields } };
    }
    case "string": return { stringValue: json };
    case "boolean": return { boolValue: json };
    default: return { numberValue: json }; // JSON.parse makes nothing else
  }
}

module.exports = {
  abortable, callLimits, knownOptions, LIMITS, MAX_OPTIONS_DEPTH, optionsStruct, pluginName, RUN_OPTIONS, RUNNER_OPTIONS, socketProblem,
  sourceExtensionList, stringList, wellFormed,
};
