import t from 'tap'
import fc from 'fast-check'
import { isDeepStrictEqual } from 'node:util'
import { parseJson } from '../lib/json.js'

/** What `JSON.parse` makes of `text`, or the class of what it throws. */
function outcome (parse: (text: string) => unknown, text: string): { value: unknown } | { threw: string } {
  try {
    return { value: parse(text) }
  } catch (err) {
    return { threw: (err as Error).constructor.name }
  }
}

t.test('parseJson answers and throws exactly as JSON.parse, for texts that are JSON and texts that are not', async (t) => {
  // short quoted texts are the ones it cuts itself: quotes, escapes, control characters, surrogates, inside and at the ends
  const char = fc.oneof(
    fc.constantFrom('"', '\\', '\\"', '\\n', '\\u00e9', '\n', '\t', '\u0000', '\u001f', ' ', '\u007f', 'é', '\ud800', '\udc00', '😀', 'a'),
    fc.string({ maxLength: 2 })
  )
  const quoted = fc.array(char, { maxLength: 12 }).map((chars) => '"' + chars.join('') + '"')
  const text = fc.oneof(quoted, fc.string({ maxLength: 14 }), fc.jsonValue().map((value) => JSON.stringify(value)))
  const same = fc.property(text, (json) => isDeepStrictEqual(outcome(parseJson, json), outcome(JSON.parse, json)))
  t.doesNotThrow(() => fc.assert(same, { numRuns: 20_000, seed: 1 }), 'no text where the two differ')
})

t.test('parseJson cuts short strings itself and leaves the rest to JSON.parse', async (t) => {
  t.equal(parseJson('""'), '')
  t.equal(parseJson('"u1"'), 'u1')
  t.equal(parseJson('"0123456789"'), '0123456789', 'ten characters: the longest V8 interns')
  t.equal(parseJson('"0123456789a"'), '0123456789a', 'eleven: JSON.parse')
  t.equal(parseJson('"é😀"'), 'é😀')
  t.equal(parseJson('"\\u00e9"'), 'é', 'an escape: JSON.parse')
  t.equal(parseJson('1'), 1)
  t.same(parseJson('{"a":"b"}'), { a: 'b' })
  t.throws(() => parseJson('"a\nb"'), SyntaxError, 'a raw control character is not JSON')
  t.throws(() => parseJson('"a"b"'), SyntaxError)
  t.throws(() => parseJson('"'), SyntaxError)
  t.throws(() => parseJson(''), SyntaxError)
})
