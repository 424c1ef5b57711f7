"use strict";
// isolated-runtime-core's sandbox tests (test/sandbox.spec.js), one for one, against a real
// isorund: what a guest may not reach, console capture, and guest-only stack traces.
const assert = require("node:assert/strict");
const { after, before, describe, test } = require("node:test");
const { errors } = require("..");
const { startDaemon } = require("../test-support/daemon");

let daemon;

before(async () => { daemon = await startDaemon(); });
after(() => daemon?.stop());

describe("fs", () => {
  test("can't require the fs module", async () => {
    const runner = daemon.runner({ "index.py": "import os\n" });
    await assert.rejects(runner.run({ funcName: "dummy", args: [] }), (error) => {
      assert.ok(error instanceof errors.ModuleNotFound);
      assert.equal(error.message, "Cannot find module 'os'");
      return true;
    });
  });
});

describe("require", () => {
  test("can't require other users code", async () => {
    const secret = `s${Math.random().toString(36).slice(2)}`;
    const other = daemon.makeRoot({ "tenant_secret.py": `secret = '${secret}'\n` });
    // The other tenant's folder is not mounted in this call's sandbox, so naming it in
    // external (or trying to open its file) finds nothing.
    const runner = daemon.runner({
      "index.py": "def escape():\n    import tenant_secret\n    return tenant_secret.secret\n\n" +
        `def read():\n    return open('${other}/tenant_secret.py').read()\n`,
    }, { external: ["tenant_secret"] });
    await assert.rejects(runner.run({ funcName: "escape", args: [] }), (error) => {
      assert.ok(error instanceof errors.ModuleNotFound);
      assert.equal(error.module, "tenant_secret");
      return true;
    });
    await assert.rejects(runner.run({ funcName: "read", args: [] }), (error) => {
      assert.ok(error instanceof errors.GuestError); // no open(), and no such path anyway
      assert.ok(!error.message.includes(secret));
      return true;
    });
  });
});

describe("process.exit", () => {
  test("can't call process.exit", async () => {
    const runner = daemon.runner({ "index.py": "def exit_():\n    exit()\n\ndef raise_exit():\n    raise SystemExit(3)\n" });
    await assert.rejects(runner.run({ funcName: "exit_", args: [] }),
      { name: "GuestError", typeName: "NameError", message: "name 'exit' is not defined" });
    // SystemExit is an error of the guest, not a silent end of the call.
    await assert.rejects(runner.run({ funcName: "raise_exit", args: [] }), { name: "GuestError", typeName: "SystemExit" });
  });
});

describe("modifying global scope", () => {
  test("can't modify host global scope", async () => {
    const runner = daemon.runner({ "index.py": "import builtins\n" });
    await assert.rejects(runner.run({ funcName: "modify" }), errors.ModuleNotFound);
    assert.equal(globalThis.a, undefined);
  });

  test("cant modify other users' global scope", async () => {
    const modify = daemon.runner({ "index.py": "import json\n\ndef modify():\n    global a\n    a = 1\n" +
      "    json.dumps = lambda *args, **kwargs: 'patched'\n" });
    const read = daemon.runner({ "index.py": "import json\n\ndef global_a():\n" +
      "    return [globals().get('a'), json.dumps([1])]\n" });
    await modify.run({ funcName: "modify", args: [] });
    assert.deepEqual(await read.run({ funcName: "global_a", args: [] }), [null, "[1]"]);
    // Not even the same file keeps its globals from one call to the next: one call, one process.
    assert.deepEqual(await modify.run({ funcName: "modify", args: [] }), null);
  });
});

describe("console", () => {
  test("allows passing custom console logic", async () => {
    const secret = `s${Math.random().toString(36).slice(2)}`;
    const lines = [];
    const runner = daemon.runner({
      "index.py": "import sys\n\ndef log(arg):\n    print(arg)\n    print('to stderr', file=sys.stderr)\n    return 'done'\n",
    }, { external: ["sys"], onConsole: (stream, text) => lines.push([stream, text]) });
    assert.equal(await runner.run({ funcName: "log", args: [secret] }), "done");
    assert.deepEqual(lines.filter(([stream]) => stream === "stdout"), [["stdout", `${secret}\n`]]);
    assert.deepEqual(lines.filter(([stream]) => stream === "stderr"), [["stderr", "to stderr\n"]]);
  });

  test("console lines and running arrive live, while the guest still runs", async () => {
    const seen = [];
    const runner = daemon.runner({
      "index.py": "import time\n\ndef slow():\n    print('first', flush=True)\n    time.sleep(1.5)\n    return 'done'\n",
    }, { external: ["time"], onConsole: (stream, text) => seen.push([text, Date.now()]) });
    const result = await runner.run({ funcName: "slow", running: () => seen.push(["running", Date.now()]) });
    const ended = Date.now();
    assert.equal(result, "done");
    assert.deepEqual(seen.map(([what]) => what), ["running", "first\n"]);
    for (const [what, at] of seen) assert.ok(ended - at >= 1000, `${what} came ${ended - at} ms before the end`);
  });

  test("a burst of lines (sent by the daemon in batches) arrives complete and in order", async () => {
    const lines = [];
    const runner = daemon.runner({ "index.py": "def chatty(n):\n    for i in range(n):\n        print('line', i)\n    return n\n" },
      { onConsole: (stream, text) => lines.push(text) });
    assert.equal(await runner.run({ funcName: "chatty", args: [2000] }), 2000);
    assert.deepEqual(lines, Array.from({ length: 2000 }, (_, i) => `line ${i}\n`));
  });

  test("an async callback is awaited, and one that throws ends the call with its error", async () => {
    const runner = daemon.runner({ "index.py": "def log():\n    print('x')\n    return 1\n" },
      { onConsole: async () => { await new Promise((resolve) => setTimeout(resolve, 10)); throw new Error("from callback"); } });
    await assert.rejects(runner.run({ funcName: "log" }), { message: "from callback" });
  });

  test("what a callback throws reaches the caller as it was thrown: a frozen error, or a plain one with no key added", async () => {
    const frozen = Object.freeze(new Error("frozen, from onConsole"));
    const plain = new Error("plain, from running");
    const files = { "index.py": "def log():\n    print('x')\n    return 1\n" };
    await assert.rejects(daemon.runner(files, { onConsole: () => { throw frozen; } }).run({ funcName: "log" }),
      (error) => error === frozen);
    await assert.rejects(daemon.runner(files).run({ funcName: "log", running: () => { throw plain; } }),
      (error) => error === plain);
    assert.deepEqual(Object.getOwnPropertyNames(plain).sort(), ["message", "stack"]);
  });
});

describe("a callback that throws or rejects, or a signal that aborts, on a daemon with a single sandbox", () => {
  const SLEEPY = "import time\n\ndef sleepy(seconds):\n    print('first', flush=True)\n" +
    "    time.sleep(seconds)\n    return 'slept'\n";
  let single;
  before(async () => { single = await startDaemon({ config: "max_concurrency = 1\n" }); });
  after(() => single?.stop());

  /** The daemon's log line for each call of `funcName` (one JSON object per call). */
  const callLines = async (funcName) => (await single.settledLog()).split("\n")
    .map((line) => line.slice(line.indexOf("{")))
    .filter((line) => line.startsWith('{"event": "call"'))
    .map((line) => JSON.parse(line))
    .filter((entry) => entry.function === funcName);

  // One callback of each kind, one throwing and one rejecting: both must end the call.
  const cases = [["onConsole", "throws"], ["running", "rejects"]];
  for (const [callback, how] of cases) {
    test(`${callback} that ${how} cancels the call: its sandbox is freed at once, not at the guest's end`, async () => {
      const boom = new Error(`from ${callback}`);
      const failing = how === "throws" ? () => { throw boom; } : async () => { throw boom; };
      const runner = single.runner({ "index.py": SLEEPY },
        { external: ["time"], onConsole: callback === "onConsole" ? failing : null });
      const started = Date.now();
      await assert.rejects(runner.run({ funcName: "sleepy", args: [5],
        running: callback === "running" ? failing : null }), (error) => error === boom);
      // The one sandbox slot is free again long before the 5 s sleep would have ended.
      const quick = single.runner({ "index.py": "def quick():\n    return 'quick'\n" });
      assert.equal(await quick.run({ funcName: "quick" }), "quick");
      assert.ok(Date.now() - started < 3000, `the next call ended ${Date.now() - started} ms after the first began`);
      const outcomes = (await callLines("sleepy")).map((entry) => entry.outcome);
      assert.equal(outcomes.at(-1), "cancelled", single.log());
    });
  }
  // An AbortSignal ends a call as a throwing callback does: the sandbox goes at once.
  test("an aborted signal ends a running call (unary and streaming): run() rejects with its reason, the sandbox is freed", async () => {
    for (const streaming of [false, true]) {
      const before = (await callLines("sleepy")).length;
      const controller = new AbortController();
      const reason = new Error(`stop (${streaming ? "stream" : "unary"})`);
      const runner = single.runner({ "index.py": SLEEPY }, { external: ["time"] });
      const started = Date.now();
      const running = streaming ? () => { setTimeout(() => controller.abort(reason), 200); } : undefined;
      if (!streaming) setTimeout(() => controller.abort(reason), 500);
      await assert.rejects(runner.run({ funcName: "sleepy", args: [5], running, signal: controller.signal }),
        (error) => error === reason);
      const quick = single.runner({ "index.py": "def quick():\n    return 'quick'\n" });
      assert.equal(await quick.run({ funcName: "quick" }), "quick");
      assert.ok(Date.now() - started < 3000, `the next call ended ${Date.now() - started} ms after the first began`);
      const lines = await callLines("sleepy");
      assert.equal(lines.length, before + 1, single.log());
      assert.equal(lines.at(-1).outcome, "cancelled", single.log());
    }
  });

  test("a signal aborted before run() sends nothing; its default reason is an AbortError", async () => {
    const before = (await callLines("sleepy")).length;
    const runner = single.runner({ "index.py": SLEEPY }, { external: ["time"] });
    await assert.rejects(runner.run({ funcName: "sleepy", args: [5], signal: AbortSignal.abort() }),
      { name: "AbortError" });
    assert.equal(await single.runner({ "index.py": "def quick():\n    return 'quick'\n" }).run({ funcName: "quick" }), "quick");
    assert.equal((await callLines("sleepy")).length, before, "an aborted call reached the daemon");
  });

  test("an abort microtasks after run() still ends the call, and finished calls leave no listener on the signal", async () => {
    const { getEventListeners } = require("node:events");
    const quickFiles = { "index.py": "def quick(i):\n    return i\n" };
    const streamed = single.runner(quickFiles, { onConsole: () => {} });
    const shared = new AbortController();
    for (let i = 0; i < 12; i++) assert.equal(await streamed.run({ funcName: "quick", args: [i], signal: shared.signal }), i);
    assert.equal(getEventListeners(shared.signal, "abort").length, 0);
    // An abort that lands between the last check and the RPC's start was heard by nobody: the
    // call ran to its end (no timeout given, so the daemon's capabilities were asked first).
    for (const runner of [single.runner(quickFiles), streamed]) {
      for (let depth = 0; depth < 6; depth++) {
        const controller = new AbortController();
        const reason = new Error(`late abort ${depth}`);
        const running = runner.run({ funcName: "quick", args: [depth], signal: controller.signal });
        let settle = Promise.resolve();
        for (let i = 0; i < depth; i++) settle = settle.then(() => {});
        await settle.then(() => controller.abort(reason));
        await assert.rejects(running, (error) => error === reason);
      }
    }
  });

  test("a signal that is not an AbortSignal is refused", async () => {
    const runner = single.runner({ "index.py": SLEEPY }, { external: ["time"] });
    await assert.rejects(runner.run({ funcName: "sleepy", args: [0], signal: { aborted: false } }),
      { name: "InvalidRequest", message: /signal must be an AbortSignal, got Object/ });
  });
});

describe("a call that names no timeout, on a daemon whose default timeout is long", () => {
  // The client's deadline follows the daemon's default timeout (from its capabilities). With
  // a 30 s guess, a daemon defaulting to 1000 s left such a call no room to wait in its queue:
  // it was refused at once while another call held the one sandbox.
  let patient;
  before(async () => {
    patient = await startDaemon({ config: "max_concurrency = 1\ndefault_timeout = 1000.0\nmax_timeout = 1000.0\n" });
  });
  after(() => patient?.stop());

  test("waits in the queue for the sandbox instead of being refused", async () => {
    const files = { "index.py": "import time\n\ndef nap(s):\n    time.sleep(s)\n    return s\n\ndef echo(x):\n    return x\n" };
    const holder = patient.runner(files, { external: ["time"] });
    let started;
    const running = new Promise((resolve) => { started = resolve; });
    const first = holder.run({ funcName: "nap", args: [1], timeout: 10000, running: started });
    await running;
    const waiter = patient.runner(files, { external: ["time"] });
    assert.equal(await waiter.run({ funcName: "echo", args: [7] }), 7);
    assert.equal(await first, 1);
  });
});

describe("stack trace", () => {
  test("should only include code frames from sandbox", async () => {
    const runner = daemon.runner({
      "index.py": "def entry():\n    second()\n\ndef second():\n    explode()\n\ndef explode():\n    raise Exception('Boom!')\n",
    });
    await assert.rejects(runner.run({ funcName: "entry", args: [] }), (error) => {
      const frames = (text) => text.split("\n").map((line) => line.trim()).filter((line) => line.startsWith("File "));
      const expected = [
        'File "/index.py", line 2, in entry',
        'File "/index.py", line 5, in second',
        'File "/index.py", line 8, in explode',
      ];
      assert.deepEqual(frames(error.traceback), expected);
      assert.deepEqual(frames(error.stack), expected); // the stack, too, is the guest's only
      assert.ok(error.stack.endsWith("Exception: Boom!"), error.stack);
      for (const hidden of [daemon.folder, "isorund", "site-packages", "node_modules", "client.js"]) {
        assert.ok(!error.stack.includes(hidden), `${hidden} in ${error.stack}`);
      }
      return true;
    });
  });
});
