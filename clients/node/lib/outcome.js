"use strict";
/**
 * How a call's outcome and gRPC's status codes become `errors`: the only place that mapping
 * lives (as the Python client's _outcome.py). A Failure the daemon sent in band is the guest's
 * or the sandbox's; a gRPC status is the transport's or the daemon's refusal, told in this
 * API's option names and with what the socket itself says when no daemon could be reached.
 * Apart from client.js so that every error a caller can meet is read in one file.
 */
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const errors = require("./errors");
const { LIMITS, RUN_OPTIONS, RUNNER_OPTIONS } = require("./inputs");

// The daemon's refusals name the request's fields as the proto spells them (`func_name`,
// `whitelisted_paths[1]`); a Node user wrote the options in camelCase.
const OPTION_OF_FIELD = new Map([...RUNNER_OPTIONS, ...RUN_OPTIONS, ...LIMITS]
  .filter((option) => /[A-Z]/.test(option))
  .map((option) => [option.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), option]));
const FIELD_NAMES = new RegExp(`\\b(${[...OPTION_OF_FIELD.keys()].join("|")})\\b`, "g");

/** A daemon's refusal in this API's terms. */
function inOptionNames(details) {
  return details.replace(FIELD_NAMES, (field) => OPTION_OF_FIELD.get(field));
}

/** An in-band Failure of the call -> one of `errors`. */
function failureError(failure) {
  const message = failure.message || "";
  switch (failure.kind) {
    case "MODULE_NOT_FOUND": return new errors.ModuleNotFound(failure.module || "", failure.traceback || "");
    case "FUNCTION_NOT_FOUND": return new errors.FunctionNotFound(message);
    case "GUEST_EXCEPTION": return new errors.GuestError(failure.typeName || "", message, failure.traceback || "");
    case "TIMEOUT": return new errors.RuntimeTimeoutError(message);
    case "RESOURCE_LIMIT": return new errors.ResourceLimitError(message, failure.limit || "");
    // "depth" or "size" when the guest's result broke a limit, as for values encoded here
    case "SERIALIZATION": return new errors.SerializationError(message, failure.limit || null);
    default: return new errors.SandboxError(message || "the sandbox failed without a message");
  }
}

/** A gRPC status error -> one of `errors`; our own errors and callbacks' errors pass through. */
function transportError(error, socket) {
  if (error instanceof errors.IsorunError || error == null || typeof error.code !== "number" ||
      typeof error.details !== "string") {
    return error;
  }
  const { details } = error;
  switch (error.code) {
    case grpc.status.INVALID_ARGUMENT: return new errors.InvalidRequest(inOptionNames(details));
    case grpc.status.RESOURCE_EXHAUSTED:
      // grpc's own size check (either side) says so; otherwise the daemon's queue is full
      if (/message larger than max/i.test(details)) {
        return new errors.ResourceLimitError(`a message to or from isorund at ${socket} is too large: ${details}`, "message");
      }
      return new errors.ResourceLimitError(details, "queue");
    case grpc.status.CANCELLED: // never this client's doing: a call it ends rejects with its own error
      return new errors.ResourceLimitError(`isorund at ${socket} did not take the call: gRPC cancelled it ` +
        "before the daemon saw it, because more calls arrived at once than the daemon lets wait " +
        `(max_open_rpcs) or because it was stopping; retry later (${details})`, "queue");
    case grpc.status.PERMISSION_DENIED: return new errors.AccessDenied(details);
    case grpc.status.DEADLINE_EXCEEDED:
      // gRPC's own deadline, or the daemon's answer for a call its deadline left no room to run
      return new errors.RuntimeTimeoutError(`the call's deadline passed before isorund at ${socket} gave a result: ${details}`);
    case grpc.status.UNAVAILABLE: {
      const why = unreachable(socket);
      if (why) return new errors.DaemonUnavailable(why);
      if (/permission denied|EACCES/i.test(details)) {
        return new errors.DaemonUnavailable(`this process may not connect to isorund at ${socket} ` +
          `(permission denied): the socket's mode and group (socket_mode, socket_group) decide who may; ` +
          `details: ${details}`);
      }
      if (/Failed to connect|No connection established/i.test(details)) {
        // grpc-js does not say why; gRPC closes a connection over the daemon's bound unseen
        return new errors.DaemonUnavailable(`isorund at ${socket} did not keep the connection: the daemon ` +
          "holds as many client connections as it allows (max_connections; each runner keeps one open), " +
          `or it is stopping, or nothing listens on the socket file; details: ${details}`);
      }
      return new errors.DaemonUnavailable(`isorund at ${socket} is unavailable: ${details}`);
    }
    default:
      return new errors.SandboxError(`isorund at ${socket} failed the call ` +
        `(${grpc.status[error.code] || error.code}): ${details}`);
  }
}

/** Why this process cannot even reach the socket's path, or null if it can. */
function unreachable(socket) {
  try {
    const found = fs.statSync(socket);
    if (found.isSocket()) return null;
    // (a config file or the daemon's folder given as the socket)
    const kind = found.isDirectory() ? "a folder" : found.isFile() ? "a regular file" : "no socket";
    return `no isorun daemon at ${socket}: it is ${kind}, not a Unix socket`;
  } catch (e) {
    if (e.code === "EACCES") {
      return `this process may not reach isorund at ${socket}: a folder on the socket's path is not ` +
        "searchable by it (permission denied); the daemon's socket belongs in a folder its callers can reach";
    }
    return `no isorun daemon at ${socket}: the socket does not exist`;
  }
}

module.exports = { failureError, transportError };
