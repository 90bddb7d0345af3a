import createError from '@fastify/error'
import type { FastifyErrorConstructor } from '@fastify/error'

/**
 * The type of a coded error class, named through a type import: left to
 * inference, the declarations would name it through the default import's
 * namespace, which TypeScript's bundler resolution does not see, and every
 * error class would be `any` there.
 */
type CodedError<Args extends unknown[]> = FastifyErrorConstructor<{ code: string }, Args>

export const FST_SESSION_INVALID_OPTION: CodedError<[string, string]> = createError(
  'FST_SESSION_INVALID_OPTION', 'Invalid session option "%s": %s', 500, TypeError)

export const FST_SESSION_UNKNOWN_PROVIDER: CodedError<[string, string]> = createError(
  'FST_SESSION_UNKNOWN_PROVIDER', 'Unknown session provider "%s". %s', 500)

export const FST_SESSION_PROVIDER_CONFLICT: CodedError<[string]> = createError(
  'FST_SESSION_PROVIDER_CONFLICT', 'A different session provider is already registered as "%s"', 500)

export const FST_SESSION_INVALID_PROVIDER: CodedError<[string]> = createError(
  'FST_SESSION_INVALID_PROVIDER', 'Invalid session provider: %s', 500, TypeError)

export const FST_SESSION_PROVIDER_OPTION: CodedError<[string, string]> = createError(
  'FST_SESSION_PROVIDER_OPTION', 'Invalid option for the %s session provider: %s', 500, TypeError)

export const FST_SESSION_NOT_SERIALIZABLE: CodedError<[string, string]> = createError(
  'FST_SESSION_NOT_SERIALIZABLE', 'Session value for key "%s" is not JSON-serialisable: %s', 500, TypeError)

export const FST_SESSION_TOO_LARGE: CodedError<[number, number]> = createError(
  'FST_SESSION_TOO_LARGE', 'Session data would be %d bytes of JSON, over the limit of %d bytes', 500, RangeError)

export const FST_SESSION_INVALID_USER: CodedError<[string]> = createError(
  'FST_SESSION_INVALID_USER', 'The session user key "%s" takes a string or a finite number', 500, TypeError)

export const FST_SESSION_DESTROYED: CodedError<[]> = createError(
  'FST_SESSION_DESTROYED', 'The session was destroyed on this request and can no longer be changed', 500)

export const FST_SESSION_STORE_UNAVAILABLE: CodedError<[string, { cause: unknown }?]> = createError(
  'FST_SESSION_STORE_UNAVAILABLE', 'The session store is unavailable: %s', 503)

export const FST_SESSION_UNSUPPORTED: CodedError<[string, string]> = createError(
  'FST_SESSION_UNSUPPORTED', 'The session provider does not support %s: %s', 500)

export const FST_SESSION_INVALID_TABLE: CodedError<[string, string]> = createError(
  'FST_SESSION_INVALID_TABLE', 'Invalid session table %s: %s', 500, TypeError)

export const FST_SESSION_MISSING_TABLE: CodedError<[string]> = createError(
  'FST_SESSION_MISSING_TABLE', 'The session table %s does not exist and createTable is false', 500)

export const FST_SESSION_COOKIE_TOO_LARGE: CodedError<[number, number]> = createError(
  'FST_SESSION_COOKIE_TOO_LARGE', 'The sealed session cookie would be %d bytes, over the limit of %d bytes', 500, RangeError)
