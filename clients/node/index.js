"use strict";
/**
 * isorun for Node.js: run untrusted Python functions in isorund's kernel-isolated sandboxes,
 * with isolated-runtime's API.
 *
 *     const { CodeRunner, errors } = require("isorun");
 *     const runner = new CodeRunner({ root: "/srv/tenants/acme", file: "rules.py" });
 *     const product = await runner.run({ funcName: "multiply", args: [4, 5] });
 *     await runner.close();
 *
 * The public names are exactly these; lib/ is private.
 */
const { CodeRunner, defaultSocket } = require("./lib/client");
const errors = require("./lib/errors");
const { TypeRegistry, registerType } = require("./lib/registry");

module.exports = { CodeRunner, errors, defaultSocket, TypeRegistry, registerType };
