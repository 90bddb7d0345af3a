import t from 'tap'
import fc from 'fast-check'
import { createHmac } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { sign, unsign } from '@fastify/cookie'
import { CookieSigner, decodeCookieValue, findCookie, lastFound, MAX_SAME_NAME_COOKIES, VerifiedCookies } from '../lib/cookie.js'
import { generateId, isWellFormedId, storeKey } from '../lib/id.js'
import { SECRET, OLD_SECRET } from './fixtures/app.js'

t.test('cookie values are signed exactly as @fastify/cookie signs them', async (t) => {
  const id = generateId()
  const ours = new CookieSigner([SECRET]).sign(id)
  t.equal(ours, sign(id, SECRET))
  t.same(unsign(ours, SECRET), { valid: true, renew: false, value: id })
  t.same(new CookieSigner([SECRET]).verify(sign(id, SECRET)), { id, key: storeKey(id), renew: false })
})

t.test('signatures are HMAC-SHA256 for secrets shorter than, as long as and longer than the hash block', async (t) => {
  const secrets = ['s'.repeat(32), 'b'.repeat(64), 'l'.repeat(65), 'ü'.repeat(40), 'x'.repeat(300)]
  for (const secret of secrets) {
    const signer = new CookieSigner([secret])
    for (let i = 0; i < 20; i++) {
      const id = generateId()
      const expected = createHmac('sha256', secret).update(id).digest('base64').replace(/=+$/, '')
      t.equal(signer.sign(id), id + '.' + expected, `secret of ${Buffer.byteLength(secret)} bytes`)
    }
  }
  // the MAC covers exactly one id's bytes: a shorter or longer value would be signed wrongly
  for (const value of ['', 'abc', generateId() + 'x', 'é'.repeat(43)]) {
    t.throws(() => new CookieSigner([SECRET]).sign(value), TypeError, JSON.stringify(value))
  }
})

t.test('verify answers which secret signed and rejects the rest', async (t) => {
  const id = generateId()
  const signer = new CookieSigner([SECRET, OLD_SECRET])
  t.same(signer.verify(sign(id, OLD_SECRET)), { id, key: storeKey(id), renew: true })
  t.equal(signer.verify(sign(id, 'x'.repeat(40))), null)
  t.equal(signer.verify(id), null, 'no signature')
  t.equal(signer.verify(sign('not-an-id', SECRET)), null)
  t.equal(signer.verify(sign(id, SECRET).slice(0, -1)), null, 'a truncated signature')
})

t.test('ids are 256 random bits, distinct, and stored only as their SHA-256', async (t) => {
  const ids = new Set(Array.from({ length: 1000 }, generateId))
  t.equal(ids.size, 1000)
  for (const id of ids) t.ok(isWellFormedId(id))
  t.equal(Buffer.from([...ids][0], 'base64url').length, 32)
  t.equal(storeKey('abc'), 'ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0')
})

t.test('findCookie finds values only at a cookie boundary and stops at the first accepted one', async (t) => {
  const seen: string[] = []
  const accept = (value: string): string | null => { seen.push(value); return value === 'good' ? value : null }
  t.equal(findCookie('asid=x; sid =y; b=sid=z;\tsid=bad; sid=good; sid=later', 'sid', accept), 'good')
  t.same(seen, ['bad', 'good'])
  t.equal(findCookie('sid', 'sid', accept), null)
  t.equal(findCookie('sid=', 'sid', accept), null)
  t.equal(findCookie('sid="good"', 'sid', accept), 'good')
  t.equal(findCookie('sid=%67ood', 'sid', accept), 'good')
  seen.length = 0
  const header = 'sid=bad; sid=good; sid=bad2; sid=good; sid=bad3'
  t.equal(findCookie(header, 'sid', accept), 'good')
  const { end, tries } = lastFound
  t.equal(tries, 2, 'where it stopped: after two values')
  t.equal(findCookie(header, 'sid', accept, end, tries), 'good', 'going on from there finds the next one')
  t.same(seen, ['bad', 'good', 'bad2', 'good'], 'trying no value twice')
  t.equal(findCookie(header, 'sid', accept, lastFound.end, MAX_SAME_NAME_COOKIES - 1), null, 'and the values tried before count against the limit')
  t.same(seen, ['bad', 'good', 'bad2', 'good', 'bad3'])
})

t.test('findCookie tries a bounded number of values of the name, so a stuffed header costs little', async (t) => {
  let tries = 0
  const accept = (value: string): string | null => { tries++; return value === 'good' ? value : null }
  const bad = Array.from({ length: 300 }, (_, i) => `sid=bad${i}`).join('; ')
  t.equal(findCookie(`${bad}; sid=good`, 'sid', accept), null, 'a value after the limit is not looked at')
  t.equal(tries, MAX_SAME_NAME_COOKIES)
  tries = 0
  const fewer = Array.from({ length: MAX_SAME_NAME_COOKIES - 1 }, (_, i) => `sid=bad${i}`).join('; ')
  t.equal(findCookie(`other=1; ${fewer}; sid=; sid=good`, 'sid', accept), 'good', 'empty values do not count')
  t.equal(tries, MAX_SAME_NAME_COOKIES)
  tries = 0
  const broken = Array(MAX_SAME_NAME_COOKIES).fill('sid=%').join('; ')
  t.equal(findCookie(`${broken}; sid=good`, 'sid', accept), null, 'undecodable values count, though never handed on')
  t.equal(tries, 0)
})

t.test('findCookie undoes percent-escapes of ASCII and passes over any other escape', async (t) => {
  const accept = (value: string): string => value
  t.equal(findCookie('sid=a%2Bb%2fc%3D', 'sid', accept), 'a+b/c=', 'upper and lower case hex')
  t.equal(findCookie('sid=%41', 'sid', accept), 'A', 'an escape alone')
  t.equal(findCookie('sid="%41%42"', 'sid', accept), 'AB', 'inside quotes')
  for (const value of ['%', '%4', 'a%', '%zz', '%4g', '%g4', '%C3%A9', '%80', '%FF', '%%41']) {
    t.equal(findCookie(`sid=${value}; sid=next`, 'sid', accept), 'next', `${value} is not ours`)
  }
})

t.test('decodeCookieValue answers what decodeURIComponent does, or the value where that throws', async (t) => {
  const reference = (value: string): string => {
    try {
      return decodeURIComponent(value)
    } catch {
      return value
    }
  }
  // escapes of every kind: ASCII, UTF-8 lead and continuation bytes, surrogates, overlong forms, broken ones
  const piece = fc.oneof(
    fc.constantFrom('a', '%', '%4', '%g1', '%41', '%7F', '%80', '%BF', '%C0%AF', '%C3', '%A9', '%E2%82%AC', '%ED%A0%80', '%F0%9F%98%80', '%F4%90%80%80', '%FF', 'é', '😀'),
    fc.integer({ min: 0, max: 255 }).map((byte) => '%' + byte.toString(16).padStart(2, '0')),
    fc.string({ maxLength: 3 })
  )
  fc.assert(fc.property(fc.array(piece, { maxLength: 12 }), (pieces) => {
    const value = pieces.join('')
    return decodeCookieValue(value) === reference(value)
  }), { numRuns: 20_000, seed: 1 })
  t.equal(decodeCookieValue('%e2%82%ac%41x'), '€Ax')
  t.equal(decodeCookieValue('%C3%A9%'), '%C3%A9%')
})

t.test('verified cookies are remembered up to a capacity, oldest out first, and failures never', async (t) => {
  const signer = new CookieSigner([SECRET])
  const cookies = new VerifiedCookies(signer, 2)
  const [a, b, c] = [generateId(), generateId(), generateId()].map((id) => signer.sign(id))
  const first = cookies.verify(a)
  t.equal(cookies.verify(a), first, 'the same answer object: no second HMAC')
  t.equal(cookies.verify('forged.value'), null)
  cookies.verify(b)
  cookies.verify(c)
  t.not(cookies.verify(a), first, 'a was evicted and verified afresh')
  t.same(cookies.verify(a), first)
})

t.test('the verified-cookie cache stays first in, first out through many evictions', async (t) => {
  const signer = new CookieSigner([SECRET])
  const cookies = new VerifiedCookies(signer, 3)
  const values = Array.from({ length: 40 }, () => signer.sign(generateId()))
  const answers: Array<ReturnType<typeof cookies.verify>> = []
  const forgotten: number[] = []
  for (let i = 0; i < values.length; i++) {
    answers.push(cookies.verify(values[i]))
    // a hit answers the remembered object and does not reorder the cache
    for (let back = 1; back <= Math.min(i, 2); back++) {
      if (cookies.verify(values[i - back]) !== answers[i - back]) forgotten.push(i - back)
    }
  }
  t.same(forgotten, [], 'the two before the newest are always still remembered')
  const last = values.length - 1
  const again = cookies.verify(values[last - 3])
  t.not(again, answers[last - 3], 'the fourth newest was evicted and verified afresh')
  t.same(again, answers[last - 3])
  t.not(cookies.verify(values[last - 2]), answers[last - 2], 'and bringing it back evicted the oldest one held')
  t.equal(cookies.verify(values[last]), answers[last], 'the newest is untouched')
})

t.test('the verified-cookie cache keeps copies of the values, not the Cookie headers they were cut from', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const signer = new CookieSigner([SECRET])
  const cookies = new VerifiedCookies(signer, 10_000)
  const pad = 'x'.repeat(20_000)
  const count = 2000
  const values = Array.from({ length: count }, () => signer.sign(generateId()))
  gc()
  const before = process.memoryUsage().heapUsed
  let verified = 0
  for (const value of values) {
    // a fresh 20 kB header each time, as each request brings its own
    const found = findCookie('sessionid=' + value + '; pad=' + pad, 'sessionid', cookies.verify)
    if (found !== null && value.startsWith(found.id + '.')) verified++
  }
  gc()
  const perEntry = (process.memoryUsage().heapUsed - before) / count
  t.equal(verified, count, 'every cookie was found and verified')
  t.ok(perEntry < 1000, `${Math.round(perEntry)} bytes per remembered cookie, not the 20 kB header it came in`)
})
