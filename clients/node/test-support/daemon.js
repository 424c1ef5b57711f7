"use strict";
/**
 * A real isorund on a temporary socket, for the tests, started the documented way
 * (`python -m isorund --socket PATH --config FILE`) with the same test plugins as the Python
 * suite (tests/conftest.py): compiler plus-to-times, resolver prefix, args resolver add-one.
 *
 * It lives outside test/ because `node --test test/` runs every .js file under test/ as a test.
 *
 *     const daemon = await startDaemon();   // in before()
 *     // or with more config (top-level keys, tables) and plugin modules:
 *     //   startDaemon({ config: "max_concurrency = 1\n[types]\n…", plugins: { "m.py": "…" } })
 *     const root = daemon.makeRoot({ "index.py": "def f():\n    return 1\n" });
 *     const runner = daemon.runner({ "index.py": "..." }, { external: ["json"] });
 *     await daemon.stop();                  // in after(); prints the daemon's log if it failed
 */
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const { CodeRunner } = require("..");

const REPO = path.resolve(__dirname, "..", "..", "..");
const PYTHON = process.env.ISORUN_PYTHON || path.join(REPO, ".venv", "bin", "python");
// Generous: the machine has 2 cores and other test suites may be running beside this one.
const START_SECONDS = 60;
const STOP_SECONDS = 30;

const PLUGINS = `import os

def plus_to_times(source, filename):
    return source.replace("+", "*")

def prefix_resolver(options):
    base = options["base"]
    def resolve(name):
        candidate = os.path.join(base, name)
        return candidate if os.path.exists(candidate) else None
    return resolve

def add_one(args):
    return [a + 1 for a in args]
`;

// `extra` sits between the top-level keys and the plugin tables, so that it may hold both
// top-level keys ("max_concurrency = 1") and tables of its own ("[types]").
const config = (plugins, extra) => `plugin_paths = [${JSON.stringify(plugins)}]
${extra}

[plugins.compilers]
plus-to-times = "test_plugins:plus_to_times"

[plugins.resolvers]
prefix = "test_plugins:prefix_resolver"

[plugins.args_resolvers]
add-one = "test_plugins:add_one"
`;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Daemon {
  constructor(folder, { config: extraConfig = "", plugins: extraPlugins = {} } = {}) {
    this.folder = folder;
    this.socket = path.join(folder, "isorund.sock");
    this.logPath = path.join(folder, "daemon.log");
    const plugins = path.join(folder, "plugins");
    fs.mkdirSync(plugins);
    fs.writeFileSync(path.join(plugins, "test_plugins.py"), PLUGINS);
    for (const [name, source] of Object.entries(extraPlugins)) fs.writeFileSync(path.join(plugins, name), source);
    this.configPath = path.join(folder, "isorund.toml");
    fs.writeFileSync(this.configPath, config(plugins, extraConfig));
    this.runners = [];
    this._spawn("w");
  }

  _spawn(logMode) {
    const log = fs.openSync(this.logPath, logMode);
    this.proc = spawn(PYTHON, ["-m", "isorund", "--socket", this.socket, "--config", this.configPath],
      { stdio: ["ignore", log, log] });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.proc.once("exit", (code, signal) => resolve({ code, signal })));
    this.exitCode = null;
    this.exited.then(({ code, signal }) => { this.exitCode = code ?? signal; });
    // Never leave a daemon behind if the test process ends without calling stop().
    this._reap = () => { if (this.exitCode === null) this.proc.kill("SIGKILL"); };
    process.once("exit", this._reap);
  }

  /** Stops the daemon (SIGTERM), awaits `whileDown()`, and starts another one on the same
   * socket and config; the runners made before stay open. */
  async restart(whileDown) {
    this.proc.kill("SIGTERM");
    await this.exited;
    process.removeListener("exit", this._reap);
    await whileDown();
    this._spawn("a");
    await this.waitReady();
  }

  async waitReady() {
    const deadline = Date.now() + START_SECONDS * 1000;
    while (!fs.existsSync(this.socket)) {
      if (this.exitCode !== null || Date.now() > deadline) {
        throw new Error(`isorund did not start (exit: ${this.exitCode}):\n${this.log()}`);
      }
      await sleep(20);
    }
  }

  get running() {
    return this.exitCode === null;
  }

  log() {
    return fs.existsSync(this.logPath) ? fs.readFileSync(this.logPath, "utf8") : "";
  }

  /** Its log once the lines being written have landed: the daemon writes them from a thread
   * of its own, in batches up to 50 ms apart (isorund/logs.py, REST_SECONDS), so it is read
   * again until it stays the same over a longer wait. */
  async settledLog() {
    let text = this.log();
    for (let i = 0; i < 100; i++) {
      await sleep(75);
      const again = this.log();
      if (again === text) return text;
      text = again;
    }
    return text;
  }

  /** A fresh guest folder holding `files` ({relative path: source}); returns its path. */
  makeRoot(files) {
    const root = fs.mkdtempSync(path.join(this.folder, "root"));
    fs.chmodSync(root, 0o755); // the sandbox reads it as an unprivileged user
    for (const [name, source] of Object.entries(files)) {
      const file = path.join(root, name);
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
      fs.writeFileSync(file, source, { mode: 0o644 });
    }
    return root;
  }

  /** A CodeRunner on this daemon for a fresh root holding `files`; closed by stop(). */
  runner(files, { file = "index.py", ...options } = {}) {
    const runner = new CodeRunner({ root: this.makeRoot(files), file, socket: this.socket, ...options });
    this.runners.push(runner);
    return runner;
  }

  /** SIGTERM (the daemon drains and removes its socket), SIGKILL if it does not exit in time. */
  async stop() {
    await Promise.all(this.runners.map((runner) => runner.close()));
    if (this.running) {
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), STOP_SECONDS * 1000);
      await this.exited;
      clearTimeout(timer);
    }
    process.removeListener("exit", this._reap);
    if (this.exitCode !== 0) process.stderr.write(`--- isorund exited with ${this.exitCode}; its log ---\n${this.log()}\n`);
    fs.rmSync(this.folder, { recursive: true, force: true });
  }
}

/** A daemon with the test plugins; `config` is TOML added to its config file (top-level keys
 * first, then any tables), `plugins` more modules ({file name: source}) in its plugin folder. */
async function startDaemon(options = {}) {
  const daemon = new Daemon(fs.mkdtempSync(path.join(os.tmpdir(), "isorun-node-")), options);
  try {
    await daemon.waitReady();
  } catch (error) {
    await daemon.stop(); // after() gets no daemon to stop: clean up here
    throw error;
  }
  return daemon;
}

module.exports = { startDaemon, PYTHON };
