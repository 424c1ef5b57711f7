"use strict";
/**
 * Every error isorun throws, in one place (the twin of the Python client's isorun.errors).
 *
 *     IsorunError
 *     ├── ModuleNotFound        the guest imported something not allowed or not present
 *     ├── FunctionNotFound      (extends TypeError) funcName is missing or not callable
 *     ├── GuestError            the guest raised: typeName, message, traceback
 *     ├── RuntimeTimeoutError   the call ran past its timeout; its whole sandbox was killed
 *     ├── ResourceLimitError    limit names which: memory, output, result, cpu, queue, message
 *     ├── SerializationError    (extends TypeError) a value has no codec or resolver
 *     ├── DaemonUnavailable     no daemon answers at the socket named in the message
 *     ├── InvalidRequest        the daemon refused the request as malformed
 *     ├── AccessDenied          the daemon does not accept this process's user or group
 *     └── SandboxError          the sandbox could not be built or died unexpectedly
 *
 * JavaScript classes have one parent. FunctionNotFound and SerializationError extend TypeError,
 * as isolated-runtime's missing-function error did, so `instanceof TypeError` holds for them;
 * IsorunError recognises them through a marker instead (Symbol.hasInstance), so
 * `err instanceof errors.IsorunError` holds for every error this package throws.
 */

const MARK = Symbol.for("isorun.error");

class IsorunError extends Error {
  static [Symbol.hasInstance](value) {
    // Subclasses inherit this static method: only IsorunError itself widens the check.
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    return this === IsorunError && value != null && value[MARK] === true;
  }
}

/** Gives every class the marker and a `name` equal to its class name (shown by the stack). */
function brand(cls) {
  Object.defineProperty(cls.prototype, MARK, { value: true });
  Object.defineProperty(cls.prototype, "name", { value: cls.name, writable: true, configurable: true });
  return cls;
}

/** The guest imported a module not allowed or not present; `traceback` says where (its frames). */
class ModuleNotFound extends IsorunError {
  constructor(module, traceback = "") {
    super(`Cannot find module '${module}'`);
    this.module = module;
    this.traceback = traceback;
  }
}

class FunctionNotFound extends TypeError {}

/**
 * The guest function (or its module, while importing) raised. `message` is the guest's own
 * message ("Boom!"), `typeName` its exception class ("ValueError"). Like isolated-runtime,
 * `stack` holds the guest's frames only (the Python traceback, paths relative to root), not the
 * frames of this client, which say nothing about the failure.
 */
class GuestError extends IsorunError {
  constructor(typeName, message, traceback = "") {
    super(message);
    this.typeName = typeName;
    this.traceback = traceback;
    if (traceback) this.stack = traceback.replace(/\n$/, "");
  }
}

class RuntimeTimeoutError extends IsorunError {}

/**
 * `limit` is memory, output, result, cpu, queue or message (a gRPC message over its size
 * limit). Going over max_processes is not one: in the guest, starting a process fails with
 * BlockingIOError (EAGAIN) and starting a thread with RuntimeError("can't start new thread"),
 * reported as a GuestError unless the guest handles it.
 */
class ResourceLimitError extends IsorunError {
  constructor(message, limit) {
    super(message);
    this.limit = limit;
  }
}

/** `limit` is "depth" or "size" when a value was too deep or too large, else null. */
class SerializationError extends TypeError {
  constructor(message, limit = null) {
    super(message);
    this.limit = limit;
  }
}

class DaemonUnavailable extends IsorunError {}
class InvalidRequest extends IsorunError {}
class AccessDenied extends IsorunError {}
class SandboxError extends IsorunError {}

const all = {
  IsorunError, ModuleNotFound, FunctionNotFound, GuestError, RuntimeTimeoutError,
  ResourceLimitError, SerializationError, DaemonUnavailable, InvalidRequest, AccessDenied,
  SandboxError,
};
Object.values(all).forEach(brand);

module.exports = all;
