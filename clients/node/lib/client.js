"use strict";
/**
 * CodeRunner: isolated-runtime's API over isorund's gRPC service. One call = one request to the
 * daemon, which runs it in a fresh sandbox and answers with one outcome.
 *
 * A runner holds one channel for its life (grpc-js connects on the first call) and asks the
 * daemon's capabilities the first time a call needs them (a tagged type name, or no timeout),
 * again when a type is missing from them or the daemon was started anew. A runner's options
 * and a call's inputs are checked in inputs.js before anything is built; outcomes and gRPC
 * status codes become `errors` in outcome.js only, as in the Python client (_inputs.py and
 * _outcome.py beside the runners' modules).
 */
const { AsyncLocalStorage } = require("async_hooks");
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const errors = require("./errors");
const { encode, isPlainObject, short, sizeBudget } = require("./codec");
const { decode } = require("./decode");
const { abortable, callLimits, knownOptions, optionsStruct, pluginName, RUN_OPTIONS, RUNNER_OPTIONS, socketProblem,
  sourceExtensionList, stringList, wellFormed } = require("./inputs");
const { failureError, transportError } = require("./outcome");
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
// How long a call that met a daemon started since the runner last heard one waits for the
// channel to reach it: the longest reconnect backoff (below) and a connection.
const RECONNECT_WAIT_MS = 2000;
// grpc-js cannot write a deadline much past 1e14 ms from now: it threw from inside the call,
// out of reach of run()'s promise, and ended the process. No daemon accepts a timeout near a
// year (isorund's max_timeout is at most 1e6 s), so the cap only lets the daemon refuse it.
const MAX_DEADLINE_MS = 365 * 24 * 3600 * 1000;
const MAX_MESSAGE = 64 * 1024 * 1024; // the daemon's default max_request_bytes
// What the values of one request may take together: the message, less room for the rest of
// the request (paths, names, framing), so that a request over the limit fails here, named.
const VALUES_BUDGET = MAX_MESSAGE - 1024 * 1024;
const STREAMS = { STDOUT: "stdout", STDERR: "stderr" };
// The errors of streamed calls that failed after the daemon had answered (and so had seen the
// call, which must not be made again). Kept aside: what a callback throws reaches the caller
// untouched (a key written on it showed up in its own keys, and a frozen one was replaced by
// the TypeError of that write).
const FAILED_AFTER_AN_ANSWER = new WeakSet();

/** $ISORUN_SOCKET, else the system daemon's socket when it exists (or we are root, or have no
 * runtime folder), else the per-user one: the paths isorund itself defaults to. */
function defaultSocket() {
  if (process.env.ISORUN_SOCKET) return process.env.ISORUN_SOCKET;
  const runtime = process.env.XDG_RUNTIME_DIR;
  if (process.geteuid() === 0 || !runtime || fs.existsSync(SYSTEM_SOCKET)) return SYSTEM_SOCKET;
  return path.join(runtime, "isorund.sock");
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

/** Capabilities with their limits as numbers: the proto's 64-bit ones arrive as strings
 * (`memoryBytes: "536870912"`), which compare and add as text. None comes near 2 ** 53. */
function numericLimits(capabilities) {
  const limits = capabilities.limits || {};
  for (const [name, value] of Object.entries(limits)) limits[name] = Number(value);
  return capabilities;
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

/** The daemon's refusal of a timeout speaks in seconds, its unit ("<= max_timeout (30 s), got
 * 100 s"): it is told what the caller passed, in milliseconds, this API's unit, so that a
 * `timeout: 100000` is recognised in it. Other errors pass as they are. */
function timeoutAsGiven(error, timeout) {
  if (timeout && error instanceof errors.InvalidRequest && /^timeout must be\b/.test(error.message)) {
    error.message += ` (timeout: ${timeout} ms)`;
  }
  return error;
}

/** The type names the daemon's capabilities do not offer, sorted. */
function missingNames(names, daemon) {
  const offered = new Set(daemon.typeNames || []);
  return [...names].filter((name) => !offered.has(name)).sort();
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
    return cause !== undefined && !FAILED_AFTER_AN_ANSWER.has(cause) && socketFile !== null && this._heardThrough !== undefined &&
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
      throw timeoutAsGiven(error, timeout);
    }
    if (!outcome) throw new errors.SandboxError("the daemon ended the call without an outcome");
    if (outcome.result !== "value") throw failureError(outcome.failure || {});
    return decode(outcome.value, "result: ", this.registry);
  }

  /** The daemon's version, isolation level, limits, plugins and value type names. */
  async capabilities() {
    return this._inFlight(async () => {
      try {
        return numericLimits(await this._unary("GetCapabilities", {}, Date.now() + CAPABILITIES_TIMEOUT_MS));
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
      throw new errors.InvalidRequest(`funcName must be a non-empty string, got ${short(funcName)}`);
    }
    wellFormed("funcName", funcName);
    if (timeout !== undefined && timeout !== null && !(Number.isFinite(timeout) && timeout > 0)) {
      throw new errors.InvalidRequest(`timeout must be a finite number of milliseconds > 0, got ${short(timeout)}`);
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
      if (heard && error !== null && (typeof error === "object" || typeof error === "function")) {
        FAILED_AFTER_AN_ANSWER.add(error);
      }
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

module.exports = { CodeRunner, defaultSocket };
