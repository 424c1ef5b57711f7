"use strict";
// The package around the calls: its public names, the error classes, socket discovery, option
// checks, a missing daemon, capabilities and close().
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { after, before, describe, test } = require("node:test");
const isorun = require("..");
const { PYTHON, startDaemon } = require("../test-support/daemon");

const { CodeRunner, errors } = isorun;

describe("the package", () => {
  test("exports exactly CodeRunner, errors, defaultSocket, TypeRegistry and registerType, from require and import alike", async () => {
    assert.deepEqual(Object.keys(isorun).sort(),
      ["CodeRunner", "TypeRegistry", "defaultSocket", "errors", "registerType"]);
    const esm = await import("isorun");
    for (const name of Object.keys(isorun)) assert.equal(esm[name], isorun[name], name);
    assert.equal(esm.default, isorun);
  });

  test("every error is an IsorunError, and the TypeErrors are TypeErrors", () => {
    const made = {
      ModuleNotFound: new errors.ModuleNotFound("os"),
      FunctionNotFound: new errors.FunctionNotFound("function f was not found"),
      GuestError: new errors.GuestError("ValueError", "Boom!", "Traceback ...\nValueError: Boom!\n"),
      RuntimeTimeoutError: new errors.RuntimeTimeoutError("late"),
      ResourceLimitError: new errors.ResourceLimitError("too big", "memory"),
      SerializationError: new errors.SerializationError("no"),
      DaemonUnavailable: new errors.DaemonUnavailable("nobody"),
      InvalidRequest: new errors.InvalidRequest("bad"),
      AccessDenied: new errors.AccessDenied("no"),
      SandboxError: new errors.SandboxError("died"),
    };
    assert.deepEqual(Object.keys(made).sort(), Object.keys(errors).filter((n) => n !== "IsorunError").sort());
    for (const [name, error] of Object.entries(made)) {
      assert.ok(error instanceof errors.IsorunError, name);
      assert.ok(error instanceof Error, name);
      assert.ok(error instanceof errors[name], name);
      assert.equal(error.name, name);
      assert.equal(error instanceof TypeError, name === "FunctionNotFound" || name === "SerializationError", name);
    }
    assert.ok(!(made.ModuleNotFound instanceof errors.GuestError)); // subclasses do not widen
    assert.ok(!(new TypeError("x") instanceof errors.IsorunError));
    assert.ok(!(null instanceof errors.IsorunError));
    assert.equal(made.ModuleNotFound.message, "Cannot find module 'os'");
    assert.equal(made.ModuleNotFound.module, "os");
    assert.equal(made.ResourceLimitError.limit, "memory");
    assert.deepEqual([made.GuestError.typeName, made.GuestError.message], ["ValueError", "Boom!"]);
    assert.equal(made.GuestError.stack, "Traceback ...\nValueError: Boom!");
  });
});

describe("socket discovery", () => {
  const saved = { ISORUN_SOCKET: process.env.ISORUN_SOCKET, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR };
  after(() => {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  });

  test("the socket option, then $ISORUN_SOCKET, then the daemon's default path", () => {
    process.env.ISORUN_SOCKET = "/tmp/from-env.sock";
    assert.equal(new CodeRunner({ root: "/r", file: "f.py", socket: "/tmp/given.sock" }).socket, "/tmp/given.sock");
    assert.equal(new CodeRunner({ root: "/r", file: "f.py" }).socket, "/tmp/from-env.sock");
    delete process.env.ISORUN_SOCKET;
    process.env.XDG_RUNTIME_DIR = "/run/user/1000";
    const expected = process.geteuid() === 0 || fs.existsSync("/run/isorund/isorund.sock")
      ? "/run/isorund/isorund.sock" : "/run/user/1000/isorund.sock";
    assert.equal(isorun.defaultSocket(), expected);
  });
});

describe("without a daemon", () => {
  const socket = path.join(os.tmpdir(), `nobody-here-${process.pid}.sock`);
  const runner = () => new CodeRunner({ root: "/nonexistent", file: "index.py", socket });

  test("a call is a DaemonUnavailable naming the socket", async () => {
    const r = runner();
    await assert.rejects(r.run({ funcName: "f", timeout: 2000 }), (error) => {
      assert.ok(error instanceof errors.DaemonUnavailable, String(error));
      assert.ok(error.message.includes(socket), error.message);
      return true;
    });
    await assert.rejects(r.capabilities(), errors.DaemonUnavailable);
    await r.close();
  });

  test("a socket path that is a file or a folder is named as such", async () => {
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), "isorun-not-a-socket-"));
    const file = path.join(folder, "isorund.toml");
    fs.writeFileSync(file, "");
    try {
      for (const [where, kind] of [[file, "a regular file"], [folder, "a folder"]]) {
        const r = new CodeRunner({ root: "/nonexistent", file: "index.py", socket: where });
        await assert.rejects(r.run({ funcName: "f" }),
          { name: "DaemonUnavailable", message: `no isorun daemon at ${where}: it is ${kind}, not a Unix socket` });
        await r.close();
      }
    } finally {
      fs.rmSync(folder, { recursive: true });
    }
  });

  test("a socket path too long for a Unix socket address is named as such", async () => {
    const long = path.join(os.tmpdir(), "y".repeat(120), "isorund.sock");
    const r = new CodeRunner({ root: "/nonexistent", file: "index.py", socket: long });
    const message = `no isorun daemon can be reached at ${long}: a Unix socket path holds at most 107 bytes ` +
      `and this one has ${Buffer.byteLength(long)}; use a shorter path (a symbolic link to the socket will do)`;
    await assert.rejects(r.run({ funcName: "f" }), { name: "DaemonUnavailable", message });
    await assert.rejects(r.capabilities(), { name: "DaemonUnavailable", message });
    await r.close();
  });

  test("a value that cannot be sent fails before any connection is tried", async () => {
    await assert.rejects(runner().run({ funcName: "f", args: [1, new WeakMap()] }),
      { name: "SerializationError", message: /^argument 1: cannot encode a value of type 'WeakMap'/ });
  });

  test("bad options are refused with what was expected", async () => {
    assert.throws(() => new CodeRunner({ root: "/r" }), errors.InvalidRequest);
    // isolated-runtime took JavaScript functions; isorun's plugins are named in the daemon config.
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", compiler: (code) => code }),
      { name: "InvalidRequest", message: /compiler must be the name of a plugin/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", external: "json" }), /external must be an array/);
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { n: 1n } }), errors.SerializationError);
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: [1, 2] }),
      { name: "SerializationError", message: /resolverOptions must be a JSON-like object .*got Array/ });
    // what JSON.stringify would quietly change is refused, naming its place
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: new Map([["a", 1]]) }),
      { name: "SerializationError", message: /resolverOptions must be a JSON-like object .*got Map/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { a: NaN } }),
      { name: "SerializationError", message: /^resolverOptions\["a"\] is NaN, which JSON has no form for/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { a: { b: [1, new Date(0)] } } }),
      { name: "SerializationError", message: /^resolverOptions\["a"\]\["b"\]\[1\] is of type Date/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { a: 1n } }),
      { name: "SerializationError", message: /^resolverOptions\["a"\] is of type bigint/ });
    // plain JSON, as the daemon reads it: a "$type" key is a key, not a tagged value
    assert.ok(new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { $type: "tuple", $value: [1], a: [{ $type: "x" }] } }));
    // "" became "." and the daemon's error named an extension nobody wrote; "." was taken as one
    for (const [sourceExtensions, message] of [[[""], `sourceExtensions[0] must look like '.py' (a dot and at least one character), got ""`],
      [[".py", "."], `sourceExtensions[1] must look like '.py' (a dot and at least one character), got "."`]]) {
      assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", sourceExtensions }), { name: "InvalidRequest", message });
    }
    assert.deepEqual(new CodeRunner({ root: "/r", file: "f.py", sourceExtensions: ["jx", ".py"] })._template.sourceExtensions,
      [".jx", ".py"]);
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", onConsole: "log" }),
      { name: "InvalidRequest", message: /onConsole must be a function/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", registry: {} }),
      { name: "InvalidRequest", message: /registry must be a TypeRegistry/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", socket: 123 }),
      { name: "InvalidRequest", message: "socket must be a string, the path of isorund's Unix socket, got number" });
    const r = runner();
    await assert.rejects(r.run({ funcName: "" }), { name: "InvalidRequest", message: /non-empty string, got ""$/ });
    await assert.rejects(r.run({ funcName: 5 }), { name: "InvalidRequest", message: /non-empty string, got 5$/ });
    await assert.rejects(r.run({ funcName: "f", args: { original: [1] } }), /args must be an array/);
    // a string in quotes ("100" read as the number 100), and no Infinity sent to the daemon
    await assert.rejects(r.run({ funcName: "f", timeout: "100" }),
      { name: "InvalidRequest", message: /^timeout must be a finite number of milliseconds > 0, got "100"$/ });
    await assert.rejects(r.run({ funcName: "f", timeout: Infinity }), { name: "InvalidRequest", message: /finite .* got Infinity$/ });
    await assert.rejects(r.run({ funcName: "f", timeout: NaN }), { name: "InvalidRequest", message: /got NaN$/ });
    await assert.rejects(r.run({ funcName: "f", timeout: 100n }), { name: "InvalidRequest", message: /got 100n$/ });
    await assert.rejects(r.run({ funcName: "f", argsResolver: (args) => args }), /argsResolver must be the name/);
    await assert.rejects(r.run({ funcName: "f", running: true }), { name: "InvalidRequest", message: /running must be a function/ });
    await assert.rejects(r.run({ funcName: "f", args: "1, 2" }), { name: "InvalidRequest", message: /args must be an array/ });
    await assert.rejects(r.run({ funcName: "f", context: new Map([["a", 1]]) }),
      { name: "InvalidRequest", message: /context must be a plain object/ });
    await assert.rejects(r.run({ funcName: "f", context: [1] }), { name: "InvalidRequest", message: /context must be a plain object/ });
  });

  test("a refused value is shown as it was written, or by its type; one whose every read throws still is", async () => {
    const r = runner();
    class Millis { constructor() { this.n = 100; } }
    for (const [timeout, shown] of [[[100], "[100]"], [{ ms: 100 }, '{"ms":100}'], [new Millis(), "Millis"],
      ["x".repeat(100), `"${"x".repeat(36)}...`]]) {
      await assert.rejects(r.run({ funcName: "f", timeout }),
        { name: "InvalidRequest", message: `timeout must be a finite number of milliseconds > 0, got ${shown}` });
    }
    // A Proxy whose property reads throw: the message-making threw the trap's error instead.
    const hostile = new Proxy({}, { get() { throw new Error("no reading me"); } });
    await assert.rejects(r.run({ funcName: hostile }), { name: "InvalidRequest", message: /non-empty string, got Object$/ });
    await assert.rejects(r.run({ funcName: "f", signal: hostile }),
      { name: "InvalidRequest", message: /^signal must be an AbortSignal, got Object$/ });
    await assert.rejects(r.run({ funcName: "f", limits: { memoryBytes: hostile } }),
      { name: "InvalidRequest", message: /^limits\.memoryBytes must be a whole number >= 0, got Object$/ });
  });

  test("a lone surrogate in a name or path is refused naming the option", async () => {
    // grpc-js sent it as bad UTF-8 and the daemon's refusal ("String field had bad UTF-8") named nothing
    for (const [options, pattern] of [[{ root: "/r\ud800" }, /^root holds a lone surrogate \(at code point 2\)/],
      [{ file: "f\udfff.py" }, /^file holds/], [{ external: ["json", "x\ud800"] }, /^external\[1\] holds/],
      [{ whitelistedPaths: ["/\udc80"] }, /^whitelistedPaths\[0\] holds/], [{ compiler: "c\ud800" }, /^compiler holds/],
      [{ resolver: "\udc80" }, /^resolver holds/]]) {
      assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", ...options }), { name: "InvalidRequest", message: pattern });
    }
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { a: ["x\ud800"] } }),
      { name: "SerializationError", message: /^resolverOptions\["a"\]\[0\] holds a lone surrogate/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolverOptions: { "k\ud800": 1 } }),
      { name: "SerializationError", message: /^resolverOptions has a key holding a lone surrogate/ });
    const r = runner();
    await assert.rejects(r.run({ funcName: "ec\ud800ho" }), { name: "InvalidRequest", message: /^funcName holds/ });
    await assert.rejects(r.run({ funcName: "f", argsResolver: "\ud800" }), { name: "InvalidRequest", message: /^argsResolver holds/ });
    await assert.rejects(r.run({ funcName: "f", context: { "k\ud800": 1 } }), { name: "InvalidRequest", message: /^a context name holds/ });
    // a surrogate pair is a character like any other: such a call gets past the client
    await assert.rejects(r.run({ funcName: "f", context: { "k\ud83d\ude00": 1 } }), errors.DaemonUnavailable);
  });

  test("an option of no known name is refused, not dropped", async () => {
    // a misspelt timeout ran with the daemon's default, a misspelt external was never allowed
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", extrnal: ["json"] }),
      { name: "InvalidRequest", message: /^unknown CodeRunner option 'extrnal': known are root, file, external,/ });
    // isolated-runtime's functions for what isorun's plugins do: the guest would have failed far from the cause
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolve: (name) => name }),
      { name: "InvalidRequest", message: /option 'resolve': isolated-runtime's resolve function is `resolver` here/ });
    assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolveArguments: (args) => args }),
      { name: "InvalidRequest", message: /option 'resolveArguments': .* is the run\(\) option `argsResolver` here/ });
    assert.throws(() => new CodeRunner(null), { name: "InvalidRequest", message: /^CodeRunner options must be an object, got null/ });
    assert.throws(() => new CodeRunner("/r"), { name: "InvalidRequest", message: /got string/ });
    // options a class builds still pass: only own keys are checked, as destructuring reads them
    class Options { constructor() { this.root = "/r"; this.file = "f.py"; } }
    assert.equal(new CodeRunner(new Options()).file, "f.py");
    const r = runner();
    await assert.rejects(r.run({ funcName: "f", timout: 100 }),
      { name: "InvalidRequest", message: /^unknown run\(\) option 'timout': known are funcName, args, context, running, timeout, argsResolver, limits, signal$/ });
    await assert.rejects(r.run(null), { name: "InvalidRequest", message: /^run\(\) options must be an object, got null/ });
    await assert.rejects(r.run("f"), { name: "InvalidRequest", message: /got string/ });
  });
});

describe("with a daemon", () => {
  let daemon;
  before(async () => { daemon = await startDaemon(); });
  after(() => daemon?.stop());

  test("capabilities list the plugins and every type name this client sends", async () => {
    const caps = await daemon.runner({ "index.py": "" }).capabilities();
    assert.deepEqual(caps.compilers, ["plus-to-times"]);
    // numbers, not the strings the proto's 64-bit fields arrive as
    assert.equal(caps.limits.memoryBytes, 512 * 2 ** 20);
    assert.ok(Object.values(caps.limits).every((value) => typeof value === "number"), JSON.stringify(caps.limits));
    for (const name of ["int", "float", "dict", "bytes", "set", "datetime"]) {
      assert.ok(caps.typeNames.includes(name), name);
    }
  });

  test("a timeout far past any daemon's maximum is the daemon's InvalidRequest, unary or streamed", async () => {
    // grpc-js could not write the deadline (timeout + the queue's allowance): it threw out of
    // reach of run()'s promise and ended the process
    const r = daemon.runner({ "index.py": "def f():\n    return 1\n" });
    for (const running of [undefined, () => {}]) {
      await assert.rejects(r.run({ funcName: "f", timeout: Number.MAX_SAFE_INTEGER, running }),
        { name: "InvalidRequest", message: /^timeout must be > 0 and <= max_timeout \(\d+ s\), got 9\.0\d*e\+12 s \(timeout: 9007199254740991 ms\)$/ });
    }
    assert.equal(await r.run({ funcName: "f" }), 1);
  });

  test("an unknown plugin is an InvalidRequest", async () => {
    const r = daemon.runner({ "index.py": "def f():\n    return 1\n" }, { compiler: "no-such-compiler" });
    await assert.rejects(r.run({ funcName: "f" }), errors.InvalidRequest);
  });

  test("a process the socket's mode keeps out is told so, not that no daemon answers", () => {
    fs.chmodSync(path.dirname(daemon.socket), 0o711); // traversable, so that connect() meets the socket's mode
    const script = `
      const { CodeRunner } = require(${JSON.stringify(path.resolve(__dirname, ".."))});
      process.setgid(65534); process.setuid(65534);
      new CodeRunner({ root: "/", file: "index.py", socket: ${JSON.stringify(daemon.socket)} })
        .run({ funcName: "f" }).then(() => console.log("ok"), (e) => console.log(e.name + ": " + e.message));`;
    const out = execFileSync(process.execPath, ["-e", script], { encoding: "utf8", cwd: "/" });
    assert.match(out, /^DaemonUnavailable: this process may not connect to isorund at .* \(permission denied\)/);
    assert.match(out, /socket_mode/);
  });

  test("a closed runner refuses new calls", async () => {
    const r = daemon.runner({ "index.py": "def f():\n    return 1\n" });
    assert.equal(await r.run({ funcName: "f" }), 1);
    await r.close();
    await assert.rejects(r.run({ funcName: "f" }), { name: "IsorunError", message: "this runner is closed" });
  });

  const SLOW = { "index.py": "import time\n\ndef slow():\n    print('started', flush=True)\n" +
    "    time.sleep(1)\n    return 'finished'\n" };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  for (const [rpc, options] of [["Run", {}], ["RunStream", { onConsole: () => {} }]]) {
    // 300 ms: the call runs in its sandbox; 0 ms: the channel has not even connected yet.
    for (const delay of [300, 0]) {
      test(`close() ${delay} ms into a call (${rpc}) lets it finish, then closes; the next call is refused`, async () => {
        const r = daemon.runner(SLOW, { external: ["time"], ...options });
        const inFlight = r.run({ funcName: "slow" });
        await sleep(delay);
        await r.close();
        // close() waited for the call: it has its value by the next turn of the event loop
        assert.equal(await Promise.race([inFlight, sleep(0).then(() => "still running")]), "finished");
        await assert.rejects(r.run({ funcName: "slow" }), { name: "IsorunError", message: "this runner is closed" });
      });
    }
  }

  test("close() from a callback of a call in flight does not wait for that call, which finishes", async () => {
    let closing;
    const r = daemon.runner(SLOW, { external: ["time"], onConsole: async () => { closing = await r.close(); } });
    assert.equal(await r.run({ funcName: "slow" }), "finished");
    assert.equal(closing, undefined); // the callback's close() resolved without deadlocking the call
    await assert.rejects(r.run({ funcName: "slow" }), { name: "IsorunError", message: "this runner is closed" });
  });

  // isorund relays a result as the sandbox encoded it; a guest that escaped to its channel can
  // send bytes that are not a Value. That call fails with a SandboxError, not grpc's INTERNAL.
  // (A string that is not UTF-8 is no such case here: protobufjs decodes it leniently.)
  const ATTACKS = path.join(__dirname, "..", "..", "..", "tests", "security", "attacks");
  const FORGED = [["result_not_a_value", "wire_type"], ["deep_result", 120], ["deep_result", 5000]];
  for (const rpc of ["Run", "RunStream"]) {
    for (const [funcName, arg] of FORGED) {
      test(`a result that is not a valid Value is that call's SandboxError (${rpc}, ${funcName} ${arg})`, async () => {
        const files = Object.fromEntries(["escape.py", "forged_events.py"].map(
          (name) => [name, fs.readFileSync(path.join(ATTACKS, name), "utf8")]));
        const r = daemon.runner(files, { file: "forged_events.py", ...(rpc === "RunStream" ? { onConsole: () => {} } : {}) });
        await assert.rejects(r.run({ funcName, args: [arg], timeout: 20000 }),
          (error) => error instanceof errors.SandboxError && /not a valid google\.protobuf\.Value/.test(error.message));
        assert.equal(await daemon.runner({ "index.py": "def f():\n    return 1\n" }).run({ funcName: "f" }), 1);
      });
    }
  }

  test("an ESM program uses it the same way", () => {
    const root = daemon.makeRoot({ "rules.py": "def multiply(a, b):\n    return a * b\n" });
    const program = `import { CodeRunner, errors } from "isorun";
      const runner = new CodeRunner({ root: ${JSON.stringify(root)}, file: "rules.py", socket: ${JSON.stringify(daemon.socket)} });
      console.log(await runner.run({ funcName: "multiply", args: [4, 5] }), typeof errors.GuestError);
      await runner.close();`;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", program], { cwd: path.join(__dirname, ".."), encoding: "utf8" });
    assert.equal(out.trim(), "20 function");
  });
});

describe("a burst of calls past what the daemon lets wait", () => {
  let small;
  before(async () => {
    small = await startDaemon({ config: "max_concurrency = 2\nqueue_size = 8\npool_size = 2\nmax_open_rpcs = 16\n" });
  });
  after(() => small?.stop());

  test("every call gets its value or a ResourceLimitError 'queue', also those gRPC cancels", async () => {
    // Past max_open_rpcs gRPC refuses calls itself, or cancels those its own queue of calls
    // not yet taken cannot hold: a CANCELLED this client did not ask for is that, not a
    // sandbox's failure (it was a SandboxError).
    const runner = small.runner({ "index.py": "def echo(x):\n    return x\n" });
    const results = await Promise.allSettled(Array.from({ length: 600 }, (_, i) => runner.run({ funcName: "echo", args: [i] })));
    const kinds = new Set(results.map((r, i) => (r.status === "fulfilled"
      ? `value ${r.value === i}` : `${r.reason.constructor.name} ${r.reason.limit}`)));
    assert.ok([...kinds].every((kind) => kind === "value true" || kind === "ResourceLimitError queue"), [...kinds].join(", "));
    assert.ok(results.some((r) => r.status === "rejected" && /did not take the call: gRPC cancelled it/.test(r.reason.message)),
      "no call was cancelled by gRPC: the burst no longer tests that path");
    assert.equal(await runner.run({ funcName: "echo", args: ["after"] }), "after");
  });
});

describe("a daemon restarted under its runners", () => {
  let restarted;
  before(async () => { restarted = await startDaemon(); });
  after(() => restarted?.stop());

  test("a runner made before serves again within a second or two of the new daemon", async () => {
    // gRPC's default reconnect backoff grows to 120 s: after 10 s down, calls went on failing
    // for 6 s after the new daemon was up (26 s after 40 s down).
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const runner = restarted.runner({ "index.py": "def echo(x):\n    return x\n" });
    assert.equal(await runner.run({ funcName: "echo", args: [1] }), 1);
    await restarted.restart(async () => {
      const until = Date.now() + 10_000;
      while (Date.now() < until) { // the host goes on calling meanwhile
        await assert.rejects(runner.run({ funcName: "echo", args: [2] }), errors.DaemonUnavailable);
        await sleep(250);
      }
    });
    const ready = Date.now();
    for (;;) {
      try {
        assert.equal(await runner.run({ funcName: "echo", args: [3] }), 3);
        break;
      } catch (error) {
        if (!(error instanceof errors.DaemonUnavailable)) throw error;
        assert.ok(Date.now() - ready < 2500, "the runner stayed unavailable after the restart");
        await sleep(50);
      }
    }
  });
});

describe("a call's limits", () => {
  test("are known by the names of the contract's Limits message, in camelCase", async () => {
    // (the client lists them itself, before any daemon is asked: the list must follow the proto)
    const protobuf = require("protobufjs");
    const root = new protobuf.Root();
    root.loadSync(path.resolve(__dirname, "..", "..", "..", "proto", "isorun", "v1", "runner.proto"));
    const contract = root.lookupType("isorun.v1.Limits").fieldsArray.map((field) => field.name).sort();
    const runner = new isorun.CodeRunner({ root: "/r", file: "a.py", socket: "/tmp/nowhere.sock" });
    await assert.rejects(runner.run({ funcName: "f", limits: { nonsense: 1 } }), (error) => {
      assert.equal(error.name, "InvalidRequest");
      assert.deepEqual(error.message.split("known are ")[1].split(", "), contract);
      return true;
    });
  });
});

describe("a runner's root, file, socket and registry", () => {
  test("are read-only, as declared: an assignment throws in strict code instead of being shown and unused", () => {
    const runner = new isorun.CodeRunner({ root: "/r", file: "a.py", socket: "/tmp/nowhere.sock" });
    for (const name of ["root", "file", "socket", "registry"]) {
      const before = runner[name];
      assert.throws(() => { runner[name] = "changed"; }, TypeError);
      assert.equal(runner[name], before);
    }
  });
});

describe("a daemon holding all the client connections it allows", () => {
  test("is named as the cause of the refusal", async () => {
    // gRPC closes a connection over max_connections as it comes, before the daemon sees it:
    // the caller was told only "No connection established".
    const d = await startDaemon({ config: "max_connections = 1\n" });
    const holder = require("node:net").createConnection(d.socket); // the one connection it keeps
    try {
      await new Promise((resolve) => holder.once("connect", resolve));
      await new Promise((resolve) => setTimeout(resolve, 300));
      await assert.rejects(d.runner({ "index.py": "def f():\n    return 1\n" }).run({ funcName: "f" }),
        { name: "DaemonUnavailable", message: /as many client connections as it allows \(max_connections/ });
    } finally {
      holder.destroy();
      await d.stop();
    }
  });
});

describe("a daemon restarted while this process was busy", () => {
  test("the first call after it is made on a new connection, not failed on the old one", async () => {
    // With the event loop blocked from the old daemon's stop to the new one's start, grpc-js
    // learnt that the connection had ended only as the next call went out on it: that call
    // failed with "Received RST_STREAM with code 2 triggered by internal client error:
    // Session closed", a SandboxError, though neither daemon had seen it.
    const d = await startDaemon();
    const runner = d.runner({ "index.py": "def echo(x):\n    return x\n" });
    assert.deepEqual(await runner.run({ funcName: "echo", args: [new Set([1])] }), new Set([1]));
    const pidFile = path.join(d.folder, "new.pid");
    const restart = 'kill -TERM "$1"; while [ -S "$2" ]; do sleep 0.05; done; ' +
      '(setsid "$3" -m isorund --socket "$2" --config "$4" >> "$5" 2>&1 < /dev/null & echo $! > "$6"); ' +
      'while ! [ -S "$2" ]; do sleep 0.05; done';
    execFileSync("bash", ["-c", restart, "restart", String(d.proc.pid), d.socket, PYTHON, d.configPath, d.logPath,
      pidFile], { timeout: 60_000 }); // synchronous: the event loop sees nothing of it
    const started = Number(fs.readFileSync(pidFile, "utf8"));
    try {
      assert.deepEqual(await runner.run({ funcName: "echo", args: [new Set([2])] }), new Set([2]));
      assert.equal(await runner.run({ funcName: "echo", args: [3] }), 3);
    } finally {
      process.kill(started, "SIGTERM");
      for (let i = 0; i < 600 && fs.existsSync(d.socket); i++) await new Promise((r) => setTimeout(r, 50));
      await d.stop();
    }
  });
});

describe("a call made as soon as a restarted daemon is ready", () => {
  test("is answered: it waits for the channel's reconnect rather than failing", async () => {
    // The failed calls while the daemon was down grew the reconnect backoff (to its 1 s cap):
    // a call made as soon as the new daemon was ready failed with DaemonUnavailable.
    const d = await startDaemon();
    try {
      const runner = d.runner({ "index.py": "def f():\n    return 1\n" });
      assert.equal(await runner.run({ funcName: "f" }), 1);
      await d.restart(async () => {
        for (let i = 0; i < 6; i++) {
          await assert.rejects(runner.run({ funcName: "f" }), errors.DaemonUnavailable);
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      });
      assert.equal(await runner.run({ funcName: "f" }), 1);
    } finally {
      await d.stop();
    }
  });
});

describe("a daemon started anew with a larger default timeout", () => {
  let d;
  before(async () => {
    d = await startDaemon({ config: "max_concurrency = 1\npool_size = 1\ndefault_timeout = 1.0\nmax_timeout = 1000.0\n" });
  });
  after(() => d?.stop());

  test("is asked it again, so a call naming no timeout may wait in the queue", async () => {
    // The default was asked once per runner: after the restart, a call naming no timeout still
    // got a deadline of 1 + 60 s against the new 1000 s, so behind another call it was refused
    // at once ("waited 0 s in the queue"), and one running past 61 s would have been cut.
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const files = {
      "index.py": "import time\ndef echo(x):\n    return x\ndef hold():\n    time.sleep(1)\n    return 'held'\n",
    };
    const runner = d.runner(files, { external: ["time"] });
    assert.equal(await runner.run({ funcName: "echo", args: [1] }), 1);
    await d.restart(async () => {
      const config = fs.readFileSync(d.configPath, "utf8");
      fs.writeFileSync(d.configPath, config.replace("default_timeout = 1.0", "default_timeout = 1000.0"));
    });
    const until = Date.now() + 10_000;
    for (;;) { // until the channel has reconnected
      try {
        assert.equal(await runner.run({ funcName: "echo", args: [2] }), 2);
        break;
      } catch (error) {
        if (!(error instanceof errors.DaemonUnavailable) || Date.now() > until) throw error;
        await sleep(50);
      }
    }
    let started;
    const running = new Promise((resolve) => { started = resolve; });
    const held = d.runner(files, { external: ["time"] }).run({ funcName: "hold", timeout: 10_000, running: started });
    await running; // the only sandbox is taken: the next call waits in the queue
    assert.equal(await runner.run({ funcName: "echo", args: [3] }), 3);
    assert.equal(await held, "held");
  });
});

describe("each gRPC status a daemon may answer with", () => {
  // A small real gRPC server stands in for the daemon: some statuses a live daemon gives only
  // in rare states (a queue past the call's deadline, gRPC's own limits).
  const grpc = require("@grpc/grpc-js");
  const { load } = require("../lib/proto");
  let server;
  let socket;
  let answer;
  before(async () => {
    socket = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "isorun-status-")), "fake.sock");
    server = new grpc.Server();
    server.addService(load().Runner.service, {
      run: (_call, callback) => callback(answer),
      runStream: (call) => call.destroy(answer),
      getCapabilities: (_call, callback) => callback(answer),
    });
    await new Promise((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(),
      (error) => (error ? reject(error) : resolve())));
  });
  after(() => server?.forceShutdown());

  const cases = [
    [grpc.status.INVALID_ARGUMENT, "file 'x.py' is not in root", "InvalidRequest", undefined],
    [grpc.status.RESOURCE_EXHAUSTED, "all 8 sandboxes are busy", "ResourceLimitError", "queue"],
    [grpc.status.RESOURCE_EXHAUSTED, "Received message larger than max (70000000 vs. 67108864)", "ResourceLimitError", "message"],
    [grpc.status.CANCELLED, "Cancelled", "ResourceLimitError", "queue"],
    [grpc.status.PERMISSION_DENIED, "uid 65534 may not call", "AccessDenied", undefined],
    [grpc.status.DEADLINE_EXCEEDED, "no sandbox was ready while the call's deadline left room for its timeout; " +
      "it was not started", "RuntimeTimeoutError", undefined],
    [grpc.status.UNAVAILABLE, "isorund is shutting down; the call was not started", "DaemonUnavailable", undefined],
    [grpc.status.INTERNAL, "something broke", "SandboxError", undefined],
  ];
  for (const [code, details, name, limit] of cases) {
    test(`${grpc.status[code]} (${details.slice(0, 30)}…) is a ${name}${limit ? ` '${limit}'` : ""}`, async () => {
      answer = { code, details };
      const r = new CodeRunner({ root: "/srv/x", file: "index.py", socket });
      try {
        await assert.rejects(r.run({ funcName: "f", args: [1], timeout: 5000 }), (error) => {
          assert.equal(error.name, name);
          assert.ok(error.message.includes(details), error.message);
          if (limit) assert.equal(error.limit, limit);
          return true;
        });
      } finally {
        await r.close();
      }
    });
  }

  test("a deadline the daemon answered is not reported as no answer", async () => {
    answer = { code: grpc.status.DEADLINE_EXCEEDED, details: "it was not started" };
    const r = new CodeRunner({ root: "/srv/x", file: "index.py", socket });
    try {
      await assert.rejects(r.run({ funcName: "f", args: [1], timeout: 5000 }),
        { name: "RuntimeTimeoutError", message: `the call's deadline passed before isorund at ${socket} gave a result: it was not started` });
    } finally {
      await r.close();
    }
  });
});
