"use strict";
/**
 * CodeRunner: isolated-runtime's API over isorund's gRPC service. One call = one request to the
 * daemon, which runs it in a fresh sandbox and answers with one outcome.
 *
 * A runner holds one channel for its life (grpc-js connects on the first call) and asks the
 * daemon's capabilities the first time a call needs them (a tagged type name, or no timeout),
 * again when a type is missing from them or the daemon was started anew. Outcomes and gRPC status codes become `errors` in this module only (failureError,
 * transportError), mirroring the Python client.
 */
const { AsyncLocalStorage } = require("async_hooks");
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const errors = require("./errors");
const { encode, sizeBudget } = require("./codec");
const { decode } = require("./decode");
const { TypeRegistry, defaultRegistry } = require("./registry");
const proto = require("./proto");

const SYSTEM_SOCKET = "/run/isorund/isorund.sock";
// How long a call may wait in the daemon's queue on top of its own timeout before the client
// gives up. The daemon honours the resulting gRPC deadline while the call is queued.
const QUEUE_ALLOWANCE_MS = 60000;
// Used for the deadline only when the caller leaves the timeout to the daemon and the daemon
// reports no default timeout of its own.
const DEFAULT_TIMEOUT_GUESS_MS = 30000;
const CAPABILITIES_TIMEOUT_MS = 10000;
// grpc-js cannot write a deadline much past 1e14 ms from now: it threw from inside the call,
// out of reach of run()'s promise, and ended the process. No daemon accepts a timeout near a
// year (isorund's max_timeout is at most 1e6 s), so the cap only lets the daemon refuse it.
const MAX_DEADLINE_MS = 365 * 24 * 3600 * 1000;
// sun_path holds 108 bytes with its terminating NUL; a longer path is cut short by the kernel.
const MAX_SOCKET_PATH_BYTES = 107;
const MAX_MESSAGE = 64 * 1024 * 1024; // the daemon's default max_request_bytes
// What the values of one request may take together: the message, less room for the rest of
// the request (paths, names, framing), so that a request over the limit fails here, named.
const VALUES_BUDGET = MAX_MESSAGE - 1024 * 1024;
const STREAMS = { STDOUT: "stdout", STDERR: "stderr" };

/** $ISORUN_SOCKET, else the system daemon's socket when it exists (or we are root, or have no
 * runtime folder), else the per-user one: the paths isorund itself defaults to. */
function defaultSocket() {
  if (process.env.ISORUN_SOCKET) return process.env.ISORUN_SOCKET;
  const runtime = process.env.XDG_RUNTIME_DIR;
  if (process.geteuid() === 0 || !runtime || fs.existsSync(SYSTEM_SOCKET)) return SYSTEM_SOCKET;
  return path.join(runtime, "isorund.sock");
}

/** Why no daemon can be reached at `socket` (an absolute path) whatever runs there, or null. */
function socketProblem(socket) {
  const size = Buffer.byteLength(socket);
  if (size <= MAX_SOCKET_PATH_BYTES) return null;
  return `no isorun daemon can be reached at ${socket}: a Unix socket path holds at most ` +
    `${MAX_SOCKET_PATH_BYTES} bytes and this one has ${size}; use a shorter path (a symbolic link to the socket will do)`;
}

function isPlainObject(value) {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** A run()'s `signal` must be an AbortSignal: anything else would be ignored, and the call
 * could then not be aborted as its caller meant. */
function abortable(signal) {
  if (signal !== undefined && signal !== null && !(signal instanceof AbortSignal)) {
    throw new errors.InvalidRequest(`signal must be an AbortSignal, got ${typeName(signal)}`);
  }
}

/** `promise`, or `signal`'s reason as soon as it aborts (a wait for the daemon's capabilities
 * or for a restarted daemon would otherwise hold an aborted call for seconds). */
function orAborted(promise, signal) {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const abort = () => reject(signal.reason);
    signal.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
  });
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
// How long a call that met a daemon started since the runner last heard one waits for the
// channel to reach it: the longest reconnect backoff (below) and a connection.
const RECONNECT_WAIT_MS = 2000;
const RUN_OPTIONS = ["funcName", "args", "context", "running", "timeout", "argsResolver", "limits", "signal"];
// The daemon's limits a call may lower for itself, as the proto's Limits names them (camelCase).
const LIMITS = ["memoryBytes", "maxProcesses", "maxOpenFiles", "maxFileBytes", "outputBytes", "resultBytes",
  "cpuSeconds", "tmpBytes"];
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

/** ``value`` as plain JSON, or a SerializationError naming the first part that is not. */
function jsonOnly(value, where, depth) {
  if (depth > 100) throw new errors.SerializationError(`${where} is nested more than 100 levels deep`);
  if (typeof value === "string" && !value.isWellFormed()) {
    throw new errors.SerializationError(`${where} holds a lone surrogate, which is not valid Unicode`);
  }
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (Number.isFinite(value)) return value;
    throw new errors.SerializationError(`${where} is ${value}, which JSON has no form for`);
  }
  if (Array.isArray(value)) return value.map((item, i) => jsonOnly(item, `${where}[${i}]`, depth + 1));
  if (isPlainObject(value)) {
    const out = {};
    for (const [key, item] of Object.entries(value)) {
      if (!key.isWellFormed()) {
        throw new errors.SerializationError(`${where} has a key holding a lone surrogate, which is not valid Unicode`);
      }
      if (item !== undefined) out[key] = jsonOnly(item, `${where}[${JSON.stringify(key)}]`, depth + 1);
    }
    return out;
  }
  throw new errors.SerializationError(`${where} is of type ${typeName(value)}; resolverOptions hold only JSON values ` +
    "(null, boolean, number, string, array, plain object)");
}

function typeName(value) {
  if (value === null || value === undefined) return String(value);
  if (typeof value === "object" || typeof value === "function") return value.constructor?.name || typeof value;
  return typeof value;
}

/** Capabilities with their limits as numbers: the proto's 64-bit ones arrive as strings
 * (`memoryBytes: "536870912"`), which compare and add as text. None comes near 2 ** 53. */
function numericLimits(capabilities) {
  const limits = capabilities.limits || {};
  for (const [name, value] of Object.entries(limits)) limits[name] = Number(value);
  return capabilities;
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
        `>= 0, got ${shown(value)}`);
    }
    checked[name] = value;
  }
  return checked;
}

/** Tells a file from the one it replaced (an inode number alone may be reused at once). */
function fileIdentity(file) {
  try {
    const st = fs.statSync(file, { bigint: true });
    return `${st.dev}:${st.ino}:${st.ctimeNs}`;
  } catch {
    return null;
  }
}

/** The type names the daemon's capabilities do not offer, sorted. */
function missingNames(names, daemon) {
  const offered = new Set(daemon.typeNames || []);
  return [...names].filter((name) => !offered.has(name)).sort();
}

/** A value as an error message shows it: a string in quotes ("100" was shown as 100). */
function shown(value) {
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? value.slice(0, 60) + "…" : value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return typeName(value);
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

class CodeRunner {
  /**
   * @param {object} options root (absolute folder of the guest code), file (relative to root),
   *   external, whitelistedPaths, sourceExtensions, compiler, resolver, resolverOptions,
   *   onConsole(stream, text), socket, registry (operator types; default: the process-wide
   *   one registerType fills). See index.d.ts.
   */
  constructor(options = {}) {
    const { root, file, external, whitelistedPaths, sourceExtensions = [".py"], compiler, resolver,
      resolverOptions, onConsole, socket, registry = defaultRegistry } = knownOptions("CodeRunner", options, RUNNER_OPTIONS);
    if (typeof root !== "string" || typeof file !== "string") {
      throw new errors.InvalidRequest("root and file must be strings: the absolute folder holding " +
        `the guest code and the file under it, got root=${typeof root}, file=${typeof file}`);
    }
    wellFormed("root", root);
    wellFormed("file", file);
    if (onConsole !== undefined && onConsole !== null && typeof onConsole !== "function") {
      throw new errors.InvalidRequest("onConsole must be a function (stream, text) => void");
    }
    if (!(registry instanceof TypeRegistry)) {
      throw new errors.InvalidRequest("registry must be a TypeRegistry");
    }
    if (socket !== undefined && socket !== null && typeof socket !== "string") {
      throw new errors.InvalidRequest(`socket must be a string, the path of isorund's Unix socket, got ${typeof socket}`);
    }
    // Read-only, as index.d.ts declares them: calls are built from what the runner was made
    // with, so a value assigned later was shown and never used (`runner.file = "b.py"`).
    for (const [name, value] of [["root", root], ["file", file], ["registry", registry],
      ["socket", socket || defaultSocket()]]) {
      Object.defineProperty(this, name, { value, enumerable: true, writable: false, configurable: false });
    }
    this.onConsole = onConsole || null;
    this._template = {
      root, file,
      external: stringList("external", external),
      whitelistedPaths: stringList("whitelistedPaths", whitelistedPaths),
      sourceExtensions: sourceExtensionList(sourceExtensions),
      compiler: pluginName("compiler", compiler),
      resolver: pluginName("resolver", resolver),
    };
    if (resolverOptions !== undefined && resolverOptions !== null) {
      this._template.resolverOptions = optionsStruct(resolverOptions);
    }
    const address = path.resolve(this.socket);
    this._address = address;
    this._unreachable = socketProblem(address);
    const { Runner } = proto.load();
    this._client = new Runner(`unix:${address}`, grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": MAX_MESSAGE,
      "grpc.max_send_message_length": MAX_MESSAGE,
      "grpc.enable_retries": 0,
      // A restarted daemon serves this runner within a second of being ready: gRPC's default
      // reconnect backoff grows to 120 s (after 100 s down, calls failed for 28 s more).
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 1000,
    });
    this._daemon = null; // a Promise of the daemon's capabilities, once asked
    this._daemonSocket = null; // the socket file they were asked through (fileIdentity)
    this._closed = false;
    this._calls = 0; // in flight: close() closes the channel when the last one ends
    this._channelClosed = new Promise((resolve) => { this._resolveChannelClosed = resolve; });
    // Set while a callback of a call runs, so that close() from it does not wait for that call.
    this._inCallback = new AsyncLocalStorage();
  }

  /**
   * Calls `funcName(...args)` of the file in a fresh sandbox; resolves to its value or rejects
   * with one of `errors`. `timeout` is in milliseconds, as in isolated-runtime. `signal` (an
   * AbortSignal) aborting ends the call: its sandbox is killed and run() rejects with the
   * signal's reason, as Node's own APIs do.
   */
  async run(options = {}) {
    return this._inFlight(() => this._run(knownOptions("run()", options, RUN_OPTIONS)));
  }

  async _run(options) {
    abortable(options.signal);
    options.signal?.throwIfAborted();
    const socketFile = fileIdentity(this._address);
    try {
      return await this._runOnce(options);
    } catch (error) {
      if (options.signal?.aborted) throw options.signal.reason;
      if (!this._lostWithAnOldDaemon(error, socketFile) || !(await orAborted(this._readySoon(), options.signal))) {
        throw error;
      }
      return this._runOnce(options); // once: the daemon now at the socket never saw the call
    }
  }

  /** Whether the channel connects within its longest reconnect backoff (1 s) and a little:
   * while the daemon was down, the backoff grew, and a call made as soon as a new daemon was
   * ready failed with DaemonUnavailable. */
  _readySoon() {
    return new Promise((resolve) => {
      this._client.waitForReady(Date.now() + RECONNECT_WAIT_MS, (error) => resolve(!error));
    });
  }

  /** Whether `error` is the end of a connection to a daemon that has been replaced since this
   * runner last heard from it, before anything of the call came back: grpc-js learns that a
   * connection ended only when it next uses it if this process was busy meanwhile (a
   * synchronous task across a daemon's restart), and the call then failed ("Session closed",
   * a SandboxError, or CANCELLED, a ResourceLimitError) though no daemon had seen it. */
  _lostWithAnOldDaemon(error, socketFile) {
    const cause = error && error.grpcCause;
    return cause !== undefined && !cause.heard && socketFile !== null && this._heardThrough !== undefined &&
      socketFile !== this._heardThrough && [grpc.status.INTERNAL, grpc.status.CANCELLED, grpc.status.UNAVAILABLE].includes(cause.code);
  }

  async _runOnce({ funcName, args, context, running, timeout, argsResolver, limits, signal }) {
    const { request, names } = this._request(funcName, args, context, timeout, argsResolver, running);
    request.limits = callLimits(limits);
    let outcome;
    try {
      // The daemon's capabilities, once per runner: its type names for tagged values, and its
      // default timeout for a call that names none (a shorter deadline would cut such calls
      // short, and leave them no room to wait in the daemon's queue).
      let daemon = names.size || !timeout ? await orAborted(this._ensureCapabilities(), signal) : null;
      if (names.size && missingNames(names, daemon).length) {
        daemon = await orAborted(this._ensureCapabilities(true), signal); // (see _ensureCapabilities)
      }
      if (names.size) this._checkNames(names, daemon);
      const defaultMs = daemon && daemon.defaultTimeoutSeconds ? daemon.defaultTimeoutSeconds * 1000 : 0;
      const deadline = Date.now() + Math.min((timeout || defaultMs || DEFAULT_TIMEOUT_GUESS_MS) + QUEUE_ALLOWANCE_MS,
        MAX_DEADLINE_MS);
      if (!running && !this.onConsole) {
        outcome = (await this._unary("Run", request, deadline, signal)).outcome;
      } else {
        outcome = await this._stream(request, deadline, running, signal);
      }
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      const error = transportError(e, this.socket);
      if (error !== e && error) Object.defineProperty(error, "grpcCause", { value: e, enumerable: false });
      throw error;
    }
    if (!outcome) throw new errors.SandboxError("the daemon ended the call without an outcome");
    if (outcome.result !== "value") throw failureError(outcome.failure || {});
    return decode(outcome.value, "result: ", this.registry);
  }

  /** The daemon's version, isolation level, limits, plugins and value type names. */
  async capabilities() {
    return this._inFlight(async () => {
      try {
        return numericLimits(await this._unary("GetCapabilities", {}, Date.now() + 10000));
      } catch (e) {
        throw transportError(e, this.socket);
      }
    });
  }

  /** Refuses new calls at once; calls already in flight finish, then the channel closes and
   * the promise resolves. From a callback of a call in flight it resolves at once (that call
   * cannot finish before its callback does), and the last call to finish closes the channel. */
  async close() {
    this._closed = true;
    if (this._calls === 0) this._closeChannel();
    if (!this._inCallback.getStore()) await this._channelClosed;
  }

  /** Runs `call` (one public method's RPCs) counted in flight. Counting starts synchronously,
   * in the caller's tick, so that a close() right after run() still lets that call finish:
   * grpc-js fails a call not yet started on a closed channel. */
  async _inFlight(call) {
    if (this._closed) throw new errors.IsorunError("this runner is closed");
    if (this._unreachable) throw new errors.DaemonUnavailable(this._unreachable);
    this._calls += 1;
    try {
      return await call();
    } finally {
      this._calls -= 1;
      if (this._closed && this._calls === 0) this._closeChannel();
    }
  }

  _closeChannel() {
    if (this._resolveChannelClosed === null) return; // closed already
    this._client.close();
    this._resolveChannelClosed();
    this._resolveChannelClosed = null;
  }

  _request(funcName, args, context, timeout, argsResolver, running) {
    if (typeof funcName !== "string" || !funcName) {
      throw new errors.InvalidRequest(`funcName must be a non-empty string, got ${shown(funcName)}`);
    }
    wellFormed("funcName", funcName);
    if (timeout !== undefined && timeout !== null && !(Number.isFinite(timeout) && timeout > 0)) {
      throw new errors.InvalidRequest(`timeout must be a finite number of milliseconds > 0, got ${shown(timeout)}`);
    }
    if (running !== undefined && running !== null && typeof running !== "function") {
      throw new errors.InvalidRequest("running must be a function");
    }
    if (args !== undefined && args !== null && !Array.isArray(args)) {
      throw new errors.InvalidRequest("args must be an array: the positional arguments of the call");
    }
    if (context !== undefined && context !== null && !isPlainObject(context)) {
      throw new errors.InvalidRequest("context must be a plain object: its entries become global names");
    }
    const names = new Set();
    const budget = sizeBudget(VALUES_BUDGET, "the arguments and context are too large");
    const request = {
      ...this._template,
      funcName,
      args: Array.from(args || [], (arg, i) => encode(arg, { names, budget, registry: this.registry,
        where: `argument ${i}: ` })),
      context: Object.create(null), // so that a "__proto__" entry stays an entry
      timeoutSeconds: timeout ? timeout / 1000 : 0,
      argsResolver: pluginName("argsResolver", argsResolver),
    };
    for (const [key, value] of Object.entries(context || {})) {
      wellFormed("a context name", key);
      // Entries holding undefined are left out, as JSON.stringify leaves them out.
      if (value !== undefined) {
        request.context[key] = encode(value, { names, budget, registry: this.registry,
          where: `context ${JSON.stringify(key)}: ` });
      }
    }
    return { request, names };
  }

  /**
   * The daemon's capabilities, asked once; `again` when a value's type was missing from its
   * answer: the channel may have reconnected to a daemon restarted with more types since,
   * which the runner refused until it was made anew. Asked again too when the socket file is
   * not the one they came through: a daemon started since may have another default timeout
   * (a call naming none got its deadline from the old one).
   */
  _ensureCapabilities(again = false) {
    const socketFile = fileIdentity(this._address);
    if (this._daemon === null || again || socketFile !== this._daemonSocket) {
      this._daemonSocket = socketFile;
      this._daemon = this._unary("GetCapabilities", {}, Date.now() + CAPABILITIES_TIMEOUT_MS);
      this._daemon.catch(() => { this._daemon = null; }); // ask again on the next call
    }
    return this._daemon;
  }

  _checkNames(names, daemon) {
    const missing = missingNames(names, daemon);
    if (missing.length) {
      throw new errors.SerializationError(`the daemon at ${this.socket} has no resolver for type ` +
        `'${missing[0]}'; it offers: ${[...(daemon.typeNames || [])].sort().join(", ") || "none"}`);
    }
  }

  /** One unary RPC; `signal` aborting cancels it (the daemon then kills its sandbox). */
  _unary(method, request, deadline, signal) {
    const socketFile = fileIdentity(this._address);
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason); // (a listener added now would never hear it)
      const call = this._client[method](request, { deadline }, (error, response) => {
        signal?.removeEventListener("abort", cancel);
        if (error) return reject(error);
        this._heardThrough = socketFile;
        return resolve(response);
      });
      const cancel = () => call.cancel();
      signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  /** Runs the call over RunStream, feeding `running` and `onConsole` live, in order. A callback
   * that returns a promise is awaited before the next event; one that throws cancels the call,
   * as `signal` aborting does. */
  async _stream(request, deadline, running, signal) {
    const socketFile = fileIdentity(this._address);
    signal?.throwIfAborted(); // (aborted in a microtask since the last check: no listener would hear it)
    const call = this._client.RunStream(request, { deadline });
    const cancel = () => call.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    let heard = false;
    try {
      for await (const event of call) {
        if (!heard) this._heardThrough = socketFile;
        heard = true;
        if ((event.event === "console" || event.event === "consoleBatch") && this.onConsole) {
          // a burst of lines may come as one consoleBatch: the same as that many console events
          const lines = event.event === "console" ? [event.console] : (event.consoleBatch.lines || []);
          for (const line of lines) {
            const stream = STREAMS[line.stream] || "stdout";
            await this._inCallback.run(true, () => this.onConsole(stream, line.text || ""));
          }
        } else if (event.event === "running" && running) {
          await this._inCallback.run(true, running);
        } else if (event.event === "outcome") {
          return event.outcome;
        }
      }
      return null;
    } catch (error) {
      if (error && typeof error === "object") error.heard = heard;
      throw error;
    } finally {
      // Leaving the loop early only destroys the Node stream: the gRPC call, and with it the
      // daemon's sandbox and concurrency slot, lives on until cancelled. After the outcome
      // the daemon has finished the call (and logged it); this only stops waiting for its status.
      signal?.removeEventListener("abort", cancel);
      call.cancel();
    }
  }
}

/** An in-band Failure of the call -> one of `errors`. */
function failureError(failure) {
  const message = failure.message || "";
  switch (failure.kind) {
    case "MODULE_NOT_FOUND": return new errors.ModuleNotFound(failure.module || "");
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

module.exports = { CodeRunner, defaultSocket };
