"use strict";
/** Helpers for the codec's tests. */

/** proto-loader's object form -> the form the decoder receives (with `kind`), for round trips. */
function received(value) {
  for (const kind of ["nullValue", "numberValue", "stringValue", "boolValue"]) {
    if (kind in value) return { kind, [kind]: value[kind] };
  }
  if ("listValue" in value) return { kind: "listValue", listValue: { values: value.listValue.values.map(received) } };
  const fields = {};
  for (const [key, item] of Object.entries(value.structValue.fields)) fields[key] = received(item);
  return { kind: "structValue", structValue: { fields } };
}

module.exports = { received };
