#!/usr/bin/env node
// The vm2 peer: how isolated-runtime runs a guest function, reduced to what the benchmark needs.
//
// A pool of worker_threads; every call gets a fresh NodeVM inside a worker (a fresh global, like
// isolated-runtime's per-run sandbox), runs the guest file's source, calls the named export and
// returns the result. The Python harness drives it over stdin/stdout, one JSON object per line:
//
//   request   {"id": 7, "fn": "echo", "args": [[7, "hi"]]}
//   response  {"id": 7, "ok": true, "result": [7, "hi"]}   or   {"id": 7, "ok": false, "error": "..."}
//
// The first line written is {"ready": true, "workers": N} once every worker is online. Requests
// may be pipelined: they queue here and go to the first idle worker, so N workers serve up to N
// calls at once. The process exits when stdin closes.
//
// usage: node vm2_peer.js --file GUEST.js [--workers N]
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

function parseArgs(argv) {
  const opts = { file: null, workers: 2 };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--file') opts.file = path.resolve(argv[++i]);
    else if (argv[i] === '--workers') opts.workers = Number(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}; expected --file PATH [--workers N]`);
  }
  if (!opts.file) throw new Error('--file PATH is required');
  if (!(opts.workers >= 1 && opts.workers <= 64)) {
    throw new Error(`--workers must be between 1 and 64, got ${opts.workers}`);
  }
  return opts;
}

// ---- worker side: one fresh NodeVM per call -------------------------------------------------

function workerMain() {
  const { NodeVM } = require('vm2');
  const { file } = workerData;
  // Read once, like isolated-runtime's source cache; the VM itself is never reused.
  const source = fs.readFileSync(file, 'utf8');

  async function runOne(fn, args) {
    const vm = new NodeVM({
      console: 'off',
      sandbox: {},
      require: false,  // echo needs no modules; resolving them would add cost, not isolation
      wrapper: 'commonjs',
    });
    const exported = vm.run(source, file);
    if (typeof exported[fn] !== 'function') throw new TypeError(`${fn} is not a function`);
    const value = await exported[fn](...args);
    // Serialise inside the worker: the value may be a vm2 proxy that structured clone rejects.
    return JSON.stringify(value === undefined ? null : value);
  }

  parentPort.on('message', ({ id, fn, args }) => {
    runOne(fn, args).then(
      (json) => parentPort.postMessage({ id, json }),
      (err) => parentPort.postMessage({ id, error: String(err && err.message || err) }),
    );
  });
}

// ---- main side: line protocol and the pool ---------------------------------------------------

function mainThread() {
  const opts = parseArgs(process.argv.slice(2));
  const idle = [];
  const queue = [];
  let online = 0;
  let busy = 0;
  let closing = false;

  function send(line) {
    process.stdout.write(line + '\n');
  }

  function dispatch() {
    while (idle.length && queue.length) {
      busy += 1;
      idle.pop().postMessage(queue.shift());
    }
    // stdin closed: answer what was asked, then leave.
    if (closing && busy === 0 && queue.length === 0) {
      Promise.all(workers.map((w) => w.terminate())).then(() => process.exit(0));
    }
  }

  const workers = [];
  for (let i = 0; i < opts.workers; i += 1) {
    const worker = new Worker(__filename, { workerData: { file: opts.file } });
    worker.on('online', () => {
      online += 1;
      idle.push(worker);
      if (online === opts.workers) send(JSON.stringify({ ready: true, workers: online }));
      dispatch();
    });
    worker.on('message', ({ id, json, error }) => {
      // The result is already JSON: splice it in instead of parsing and re-encoding it.
      if (error === undefined) send(`{"id":${id},"ok":true,"result":${json}}`);
      else send(JSON.stringify({ id, ok: false, error }));
      busy -= 1;
      idle.push(worker);
      dispatch();
    });
    worker.on('error', (err) => {
      send(JSON.stringify({ fatal: String(err && err.stack || err) }));
      process.exit(1);
    });
    workers.push(worker);
  }

  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    let req;
    try {
      req = JSON.parse(line);
    } catch (err) {
      send(JSON.stringify({ fatal: `bad request line: ${err.message}` }));
      return;
    }
    queue.push({ id: req.id, fn: req.fn, args: req.args || [] });
    dispatch();
  });
  lines.on('close', () => {
    closing = true;
    if (online === opts.workers) dispatch();
  });
}

if (isMainThread) mainThread();
else workerMain();
