import createError from '@fastify/error'

export const FST_SESSION_INVALID_OPTION = createError<[string, string]>(
  'FST_SESSION_INVALID_OPTION', 'Invalid session option "%s": %s', 500, TypeError)

export const FST_SESSION_UNKNOWN_PROVIDER = createError<[string, string]>(
  'FST_SESSION_UNKNOWN_PROVIDER', 'Unknown session provider "%s". %s', 500)

export const FST_SESSION_PROVIDER_CONFLICT = createError<[string]>(
  'FST_SESSION_PROVIDER_CONFLICT', 'A different session provider is already registered as "%s"', 500)

export const FST_SESSION_INVALID_PROVIDER = createError<[string]>(
  'FST_SESSION_INVALID_PROVIDER', 'Invalid session provider: %s', 500, TypeError)

export const FST_SESSION_PROVIDER_OPTION = createError<[string, string]>(
  'FST_SESSION_PROVIDER_OPTION', 'Invalid option for the %s session provider: %s', 500, TypeError)

export const FST_SESSION_NOT_SERIALIZABLE = createError<[string, string]>(
  'FST_SESSION_NOT_SERIALIZABLE', 'Session value for key "%s" is not JSON-serialisable: %s', 500, TypeError)

export const FST_SESSION_TOO_LARGE = createError<[number, number]>(
  'FST_SESSION_TOO_LARGE', 'Session data would be %d bytes of JSON, over the limit of %d bytes', 500, RangeError)

export const FST_SESSION_INVALID_USER = createError<[string]>(
  'FST_SESSION_INVALID_USER', 'The session user key "%s" takes a string or a finite number', 500, TypeError)

export const FST_SESSION_DESTROYED = createError(
  'FST_SESSION_DESTROYED', 'The session was destroyed on this request and can no longer be changed', 500)

export const FST_SESSION_STORE_UNAVAILABLE = createError<[string, { cause: unknown }?]>(
  'FST_SESSION_STORE_UNAVAILABLE', 'The session store is unavailable: %s', 503)

export const FST_SESSION_UNSUPPORTED = createError<[string, string]>(
  'FST_SESSION_UNSUPPORTED', 'The session provider does not support %s: %s', 500)

export const FST_SESSION_INVALID_TABLE = createError<[string, string]>(
  'FST_SESSION_INVALID_TABLE', 'Invalid session table name %s: %s', 500, TypeError)

export const FST_SESSION_MISSING_TABLE = createError<[string]>(
  'FST_SESSION_MISSING_TABLE', 'The session table %s does not exist and createTable is false', 500)

export const FST_SESSION_COOKIE_TOO_LARGE = createError<[number, number]>(
  'FST_SESSION_COOKIE_TOO_LARGE', 'The sealed session cookie would be %d bytes, over the limit of %d bytes', 500, RangeError)
