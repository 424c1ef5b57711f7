"use strict";
// isolated-runtime's runtime tests (packages/isolated-runtime/test/index.spec.js: the pool,
// faulty code, timeouts), one for one, against a real isorund. The cases that repeat the core
// ones (context, extension, compiler, external, resolver, args resolver) are in run.test.js.
const assert = require("node:assert/strict");
const { after, before, describe, test } = require("node:test");
const { errors } = require("..");
const { startDaemon } = require("../test-support/daemon");

const SLEEP = "import time\n\ndef sleep(delay):\n    time.sleep(delay)\n    return delay\n\n" +
  "def time_since(start):\n    return time.time() * 1000 - start\n\n" +
  "def spin():\n    while True:\n        pass\n";
let daemon;

before(async () => { daemon = await startDaemon(); });
after(() => daemon?.stop());

describe("with a function", () => {
  test("runs the code in a given file and returns a promise resolving to the result", async () => {
    const runner = daemon.runner({ "index.py": "def multiply(a, b):\n    return a * b\n" });
    const pending = runner.run({ funcName: "multiply", args: [2, 3] });
    assert.ok(pending instanceof Promise);
    assert.equal(await pending, 6);
  });
});

describe("With multiple functions", () => {
  test("runs in parallel", async () => {
    const runner = daemon.runner({ "index.py": SLEEP }, { external: ["time"] });
    const delay = 3; // seconds; generous, for a busy two-core machine
    const start = Date.now();
    const order = [];
    const slow = runner.run({ funcName: "sleep", args: [delay] }).then((v) => { order.push("slow"); return v; });
    const fast = runner.run({ funcName: "time_since", args: [start] }).then((v) => { order.push("fast"); return v; });
    const [slept, duration] = await Promise.all([slow, fast]);
    assert.equal(slept, delay);
    assert.ok(duration < delay * 1000, `the second call waited for the first: ${duration} ms`);
    assert.deepEqual(order, ["fast", "slow"]);
  });

  test("many concurrent calls all answer", async () => {
    const runner = daemon.runner({ "index.py": "def echo(x):\n    return x\n" });
    const calls = Array.from({ length: 40 }, (_, i) => runner.run({ funcName: "echo", args: [i] }));
    assert.deepEqual(await Promise.all(calls), Array.from({ length: 40 }, (_, i) => i));
  });
});

describe("With faulty code", () => {
  test("reflects the underlying error", async () => {
    const runner = daemon.runner({ "index.py": "def multiply(a, b):\n    return a + ccccc\n" });
    await assert.rejects(runner.run({ funcName: "multiply", args: [4, 5] }), (error) => {
      assert.ok(error instanceof Error);
      assert.ok(error instanceof errors.GuestError);
      assert.equal(error.typeName, "NameError");
      return true;
    });
  });

  test("reflects a syntax error in the file", async () => {
    const runner = daemon.runner({ "index.py": "def broken(:\n    pass\n" });
    await assert.rejects(runner.run({ funcName: "broken" }), { name: "GuestError", typeName: "SyntaxError" });
  });
});

describe("A call's own limits", () => {
  test("lower the daemon's for that call only, and are checked before anything is sent", async () => {
    const runner = daemon.runner({ "index.py": "def hold(mib):\n    return len(bytearray(mib << 20))\n" });
    assert.equal(await runner.run({ funcName: "hold", args: [200] }), 200 * 2 ** 20);
    await assert.rejects(runner.run({ funcName: "hold", args: [200], limits: { memoryBytes: 96 * 2 ** 20 } }),
      { name: "ResourceLimitError", limit: "memory" });
    assert.equal(await runner.run({ funcName: "hold", args: [1], limits: { memoryBytes: 96 * 2 ** 20, cpuSeconds: 2.5 } }),
      2 ** 20);
    await assert.rejects(runner.run({ funcName: "hold", args: [1], limits: { memoryBytes: 2 ** 40 } }),
      { name: "InvalidRequest", message: /^limits\.memoryBytes may only lower the daemon's limit/ });
    for (const [limits, message] of [
      [{ memory: 1 }, /^unknown limit 'memory'; known are cpuSeconds, maxFileBytes/],
      [{ memoryBytes: -1 }, /^limits\.memoryBytes must be a whole number >= 0, got -1/],
      [{ maxProcesses: 1.5 }, /a whole number/],
      [{ cpuSeconds: "1" }, /a number of seconds/],
      [[1], /^limits must be a plain object/],
    ]) {
      await assert.rejects(runner.run({ funcName: "hold", args: [1], limits }), { name: "InvalidRequest", message });
    }
  });
});

describe("A request the daemon refuses", () => {
  test("names the options as this API spells them, not as the proto does", async () => {
    const runner = daemon.runner({ "index.py": "def f():\n    return 1\n" }, { whitelistedPaths: ["relative/folder"] });
    await assert.rejects(runner.run({ funcName: "f" }),
      { name: "InvalidRequest", message: /^whitelistedPaths\[0\] must be an absolute folder path/ });
    await assert.rejects(daemon.runner({ "index.py": "" }).run({ funcName: "x".repeat(300) }),
      { name: "InvalidRequest", message: /^funcName must be a name of 1 to 256 characters/ });
  });
});

describe("Timeouts", () => {
  test("throws an error if the code execution times-out", async () => {
    const runner = daemon.runner({ "index.py": SLEEP }, { external: ["time"] });
    for (const [funcName, args] of [["sleep", [30]], ["spin", []]]) {
      const started = Date.now();
      await assert.rejects(runner.run({ funcName, args, timeout: 1000 }), (error) => {
        assert.ok(error instanceof errors.RuntimeTimeoutError, `${funcName}: ${error}`);
        assert.ok(error instanceof errors.IsorunError);
        return true;
      });
      assert.ok(Date.now() - started < 10000, `${funcName} was not stopped near its timeout`);
    }
    assert.ok(daemon.running);
    assert.equal(await runner.run({ funcName: "sleep", args: [0] }), 0); // the daemon goes on
  });

  test("the default timeout is five seconds, like isolated-runtime's", async () => {
    const runner = daemon.runner({ "index.py": SLEEP }, { external: ["time"] });
    const started = Date.now();
    await assert.rejects(runner.run({ funcName: "sleep", args: [20] }), errors.RuntimeTimeoutError);
    const elapsed = Date.now() - started;
    assert.ok(elapsed > 4000 && elapsed < 15000, `timed out after ${elapsed} ms`);
  });

  test("a timeout of 0 or less is refused before sending", async () => {
    const runner = daemon.runner({ "index.py": SLEEP });
    await assert.rejects(runner.run({ funcName: "sleep", args: [0], timeout: 0 }), errors.InvalidRequest);
  });
});
