// Type declarations of isorun's Node.js client. The value mapping is in README.md ("Values").

/** What a value may be when sent: plain data, the types README.md lists as tagged, and
 * instances of classes registered in the runner's TypeRegistry (`object` here: which classes
 * are registered is known at run time only, and the codec refuses the others). */
export type Sendable =
  | null | undefined | boolean | number | bigint | string | Date | Uint8Array
  | Sendable[] | Set<Sendable> | Map<Sendable, Sendable> | { [key: string]: Sendable } | object;

/** What a result may be: Python values decoded as README.md lists (tuple -> Array, Decimal ->
 * string, timedelta -> milliseconds, complex -> {real, imag}, ...), and whatever the resolvers
 * of the runner's TypeRegistry build (`object`). */
export type Received =
  | null | boolean | number | bigint | string | Date | Buffer
  | Received[] | Set<Received> | Map<Received, Received> | { [key: string]: Received } | object;

export type ConsoleStream = "stdout" | "stderr";

export interface CodeRunnerOptions {
  /** Absolute host folder holding the guest code. */
  root: string;
  /** File, relative to root, whose functions are called. */
  file: string;
  /** Extra importable top-level modules (stdlib or installed on the daemon's host). */
  external?: string[];
  /** Extra absolute host folders guest modules may import from (mounted read-only). */
  whitelistedPaths?: string[];
  /** Extensions of importable guest source; default [".py"]. "jx" is read as ".jx"; "" and "." are refused. */
  sourceExtensions?: string[];
  /** Name of a source-transform plugin registered in the daemon's config. */
  compiler?: string;
  /** Name of a module-resolver plugin registered in the daemon's config. */
  resolver?: string;
  /** Plain JSON handed to the resolver plugin as it is (a "$type" key is a key). */
  resolverOptions?: Record<string, unknown>;
  /** Called live with each line the guest prints, trailing newline included. */
  onConsole?: (stream: ConsoleStream, text: string) => unknown;
  /** Daemon socket; default: $ISORUN_SOCKET, then the daemon's own default path. */
  socket?: string;
  /** Operator types for this runner's values; default: the process-wide registry (registerType). */
  registry?: TypeRegistry;
}

export interface RunOptions {
  /** Name of the function in `file`. */
  funcName: string;
  /** Positional arguments; missing ones reach the guest as None. */
  args?: Sendable[];
  /** Global names visible to the guest code. */
  context?: { [name: string]: Sendable };
  /** Called once the function is found, just before it is called. */
  running?: () => unknown;
  /** Wall-clock timeout in milliseconds; default: the daemon's (5000 ms unless configured). */
  timeout?: number;
  /** Name of an args-resolver plugin registered in the daemon's config. */
  argsResolver?: string;
  /** The daemon's limits lowered for this call (0 or left out: the daemon's). */
  limits?: Limits;
  /** Aborting it ends the call (its sandbox is killed); run() rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The daemon's `[limits]`, in camelCase; a call may only lower them. */
export interface Limits {
  memoryBytes?: number;
  maxProcesses?: number;
  maxOpenFiles?: number;
  maxFileBytes?: number;
  outputBytes?: number;
  resultBytes?: number;
  cpuSeconds?: number;
  tmpBytes?: number;
}

/** The daemon's answer to GetCapabilities (proto field names in camelCase). */
export interface Capabilities {
  version?: string;
  isolation?: "ISOLATION_UNSPECIFIED" | "KERNEL" | "NONE";
  typeNames: string[];
  compilers: string[];
  resolvers: string[];
  argsResolvers: string[];
  limits?: Record<string, number>;
  defaultTimeoutSeconds?: number;
  maxTimeoutSeconds?: number;
  defaultExternal: string[];
  maxConcurrency?: number;
}

export class CodeRunner {
  constructor(options: CodeRunnerOptions);
  readonly root: string;
  readonly file: string;
  readonly socket: string;
  readonly registry: TypeRegistry;
  /** Calls `funcName(...args)` in a fresh sandbox; resolves to its value or rejects with one of `errors`. */
  run<T = Received>(options: RunOptions): Promise<T>;
  capabilities(): Promise<Capabilities>;
  /** Refuses new calls at once; resolves when the calls in flight have finished and the channel
   * is closed (at once from a callback of a call in flight: the last call closes the channel). */
  close(): Promise<void>;
}

/** Operator types (docs/values.md, section 5): a class, its type name, and both halves of its
 * format. The daemon must list the same name in its `[types]`. */
export class TypeRegistry {
  /** Lookups that miss here fall back to `parent`; names and classes are unique along the chain. */
  constructor(options?: { parent?: TypeRegistry });
  /**
   * Values whose prototype is exactly `cls.prototype` travel tagged `name`, with
   * `encode(value)` as their payload; a result tagged `name` is rebuilt by `decode(payload)`.
   * Throws TypeError for a malformed name or non-function arguments, Error for a built-in
   * name, a name or class already registered, or a class the codec encodes itself.
   */
  register<T extends object>(cls: abstract new (...args: any[]) => T, name: string,
    encode: (value: T) => Sendable, decode: (payload: Received) => T): void;
  /** Every type name this registry encodes and decodes, built-in ones included, sorted. */
  names(): string[];
}

/** Registers an operator type in the process-wide registry every runner uses by default. */
export function registerType<T extends object>(cls: abstract new (...args: any[]) => T, name: string,
  encode: (value: T) => Sendable, decode: (payload: Received) => T): void;

/** $ISORUN_SOCKET, else /run/isorund/isorund.sock (root, or when it exists), else $XDG_RUNTIME_DIR/isorund.sock. */
export function defaultSocket(): string;

export namespace errors {
  /** Base of every isorun error: `err instanceof errors.IsorunError` holds for all of them. */
  class IsorunError extends Error {}
  /** The guest imported a module that is not allowed or does not exist. */
  class ModuleNotFound extends IsorunError {
    constructor(module: string, traceback?: string);
    /** "Cannot find module 'NAME'" */
    readonly message: string;
    readonly module: string;
    /** Where the import was: the guest's frames, root-relative paths ("" when not known). */
    readonly traceback: string;
  }
  /** funcName is missing from the file or not callable. Also an IsorunError. */
  class FunctionNotFound extends TypeError {}
  /** The guest raised. `stack` is the guest's traceback: guest frames only, root-relative paths. */
  class GuestError extends IsorunError {
    constructor(typeName: string, message: string, traceback?: string);
    /** The Python exception class, e.g. "ValueError". */
    readonly typeName: string;
    readonly traceback: string;
  }
  /** The call ran past its timeout; its whole sandbox was killed. */
  class RuntimeTimeoutError extends IsorunError {}
  /** The call went over a limit. */
  class ResourceLimitError extends IsorunError {
    constructor(message: string, limit: string);
    /** memory, output, result, cpu, queue or message (a gRPC message over its size limit).
     * Going over max_processes is not one: in the guest,
     * starting a process fails with BlockingIOError (EAGAIN) and starting a thread with
     * RuntimeError("can't start new thread"), reported as a GuestError unless the guest handles it. */
    readonly limit: string;
  }
  /** A value cannot cross the wire; raised before sending for arguments and context. Also an IsorunError. */
  class SerializationError extends TypeError {
    constructor(message: string, limit?: "depth" | "size" | null);
    readonly limit: "depth" | "size" | null;
  }
  /** No daemon answers at the socket named in the message. */
  class DaemonUnavailable extends IsorunError {}
  /** The request was refused as malformed (bad path, unknown plugin, timeout out of range). */
  class InvalidRequest extends IsorunError {}
  /** The daemon does not accept this process's user or group. */
  class AccessDenied extends IsorunError {}
  /** The sandbox could not be built or died without reporting an outcome. */
  class SandboxError extends IsorunError {}
}
