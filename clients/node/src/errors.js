'use strict';
// Errors of the client: one base class, TurnstileError, with the gRPC status
// (`code`, a number, and `codeName`, e.g. 'INVALID_ARGUMENT') and subclasses for
// the cases a caller acts on. The server's google.rpc error details
// (grpc-status-details-bin) are decoded by hand: the few messages needed are
// small, and it saves a dependency.

const { status: Status } = require('@grpc/grpc-js');

const CODE_NAMES = Object.fromEntries(Object.entries(Status).map(([name, n]) => [n, name]));

class TurnstileError extends Error {
  constructor(message, { code = Status.UNKNOWN, details, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'TurnstileError';
    /** The gRPC status code (a number, see require('@grpc/grpc-js').status). */
    this.code = code;
    /** Its name, e.g. 'NOT_FOUND'. */
    this.codeName = CODE_NAMES[code] || 'UNKNOWN';
    /** Decoded google.rpc details: {badRequest, errorInfo, retryInfo}, when the server sent them. */
    this.details = details || {};
    /** ErrorInfo.reason when present, e.g. 'TOO_MANY_WAITERS', 'SHUTTING_DOWN'. */
    this.reason = this.details.errorInfo ? this.details.errorInfo.reason : undefined;
  }
}

/** A request field was refused, by this client or by the coordinator. */
class InvalidArgumentError extends TurnstileError {
  constructor(field, reason, opts = {}) {
    super(`invalid ${field}: ${reason}`, { code: Status.INVALID_ARGUMENT, ...opts });
    this.name = 'InvalidArgumentError';
    /** The field at fault, e.g. 'key', 'ttl', 'owner' (from google.rpc.BadRequest). */
    this.field = field;
    this.reason = reason;
  }
}

/** The lock is held by someone else (a try-lock, or a wait that ran out). Not a gRPC error. */
class ContendedError extends TurnstileError {
  constructor(key, current) {
    const holder = current && current.held ? current.owner : undefined;
    super(
      holder !== undefined
        ? `lock ${JSON.stringify(key)} is held by ${JSON.stringify(holder)}`
        : `lock ${JSON.stringify(key)} was not granted in time`,
      { code: Status.ABORTED },
    );
    this.name = 'ContendedError';
    this.key = key;
    /** The holder's owner string, when known. */
    this.holder = holder;
    /** Time left on the holder's lease in ms, when known. */
    this.expiresInMs = current && current.held ? current.expiresInMs : undefined;
    /** Number of waiters queued on the key. */
    this.waiters = current ? current.waiters : 0;
  }
}

/** The lease ended before the holder was done: the work may have overlapped with another holder. */
class LeaseLostError extends TurnstileError {
  constructor(key, fencingToken, reason) {
    super(`lease on ${JSON.stringify(key)} (token ${fencingToken}) lost: ${reason}`, { code: Status.ABORTED });
    this.name = 'LeaseLostError';
    this.key = key;
    this.fencingToken = fencingToken;
    /** 'ended' (the coordinator said the lease is gone) or 'not_renewed' (its validity ran out). */
    this.reason = reason;
  }
}

// ---- minimal protobuf reading, for google.rpc.Status and its details ----

function readVarint(buf, pos) {
  let value = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    value |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [value, pos];
    shift += 7n;
  }
}

/** Splits a message into [fieldNumber, wireType, value] (value: BigInt or Buffer). */
function fields(buf) {
  const out = [];
  let pos = 0;
  while (pos < buf.length) {
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    if (wire === 0) {
      let v;
      [v, pos] = readVarint(buf, pos);
      out.push([field, wire, v]);
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      const end = pos + Number(len);
      out.push([field, wire, buf.subarray(pos, end)]);
      pos = end;
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else {
      throw new Error(`unsupported wire type ${wire}`);
    }
  }
  return out;
}

const str = (b) => Buffer.from(b).toString('utf8');

/** Decodes the google.rpc.Status in grpc-status-details-bin into the details turnstile sends. */
function decodeDetails(bin) {
  const details = {};
  for (const [f, , any] of fields(bin)) {
    if (f !== 3) continue; // Status.details: repeated Any
    let typeUrl = '';
    let value = Buffer.alloc(0);
    for (const [af, , av] of fields(any)) {
      if (af === 1) typeUrl = str(av);
      if (af === 2) value = av;
    }
    const type = typeUrl.slice(typeUrl.lastIndexOf('/') + 1);
    if (type === 'google.rpc.BadRequest') {
      const violations = [];
      for (const [vf, , v] of fields(value)) {
        if (vf !== 1) continue;
        const fv = { field: '', description: '' };
        for (const [ff, , fvv] of fields(v)) {
          if (ff === 1) fv.field = str(fvv);
          if (ff === 2) fv.description = str(fvv);
        }
        violations.push(fv);
      }
      details.badRequest = { fieldViolations: violations };
    } else if (type === 'google.rpc.ErrorInfo') {
      const info = { reason: '', domain: '', metadata: {} };
      for (const [ef, , ev] of fields(value)) {
        if (ef === 1) info.reason = str(ev);
        if (ef === 2) info.domain = str(ev);
        if (ef === 3) {
          let k = '';
          let val = '';
          for (const [mf, , mv] of fields(ev)) {
            if (mf === 1) k = str(mv);
            if (mf === 2) val = str(mv);
          }
          info.metadata[k] = val;
        }
      }
      details.errorInfo = info;
    } else if (type === 'google.rpc.RetryInfo') {
      let ms = 0;
      for (const [rf, , rv] of fields(value)) {
        if (rf !== 1) continue; // retry_delay: Duration
        for (const [df, , dv] of fields(rv)) {
          if (df === 1) ms += Number(dv) * 1000;
          if (df === 2) ms += Number(dv) / 1e6;
        }
      }
      details.retryInfo = { retryDelayMs: ms };
    }
  }
  return details;
}

/** Turns a gRPC error from @grpc/grpc-js into a TurnstileError. */
function fromGrpc(err) {
  if (err instanceof TurnstileError) return err;
  let details = {};
  const bin = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (bin) {
    try {
      details = decodeDetails(Buffer.from(bin));
    } catch {
      details = {};
    }
  }
  const code = typeof err.code === 'number' ? err.code : Status.UNKNOWN;
  const message = err.details || err.message || String(err);
  if (code === Status.INVALID_ARGUMENT) {
    const v = details.badRequest && details.badRequest.fieldViolations[0];
    if (v) return new InvalidArgumentError(v.field, v.description, { details, cause: err });
    // No detail: the server's message names the field ("invalid key: must not be empty").
    const m = /^(?:invalid )?([A-Za-z_][\w.]*): (.*)$/s.exec(message);
    if (m) return new InvalidArgumentError(m[1], m[2], { details, cause: err });
    return new InvalidArgumentError('unknown', message, { details, cause: err });
  }
  return new TurnstileError(message, { code, details, cause: err });
}

/** Failures worth asking again: the coordinator is restarting, recovering or unreachable. */
function isTransient(err) {
  return err instanceof TurnstileError && (err.code === Status.UNAVAILABLE || err.code === Status.DEADLINE_EXCEEDED);
}

module.exports = {
  TurnstileError,
  InvalidArgumentError,
  ContendedError,
  LeaseLostError,
  fromGrpc,
  isTransient,
  decodeDetails,
  Status,
};
