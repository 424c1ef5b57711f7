// The ESM entry: the same objects as the CommonJS one (one module instance, so `instanceof`
// agrees whichever way a program imports isorun).
import isorun from "./index.js";

export const { CodeRunner, errors, defaultSocket, TypeRegistry, registerType } = isorun;
export default isorun;
