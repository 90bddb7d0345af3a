import t from 'tap'
import Fastify from 'fastify'
import sessions from '../index.js'

t.test('counter', async (t) => {
  const app = Fastify()
  await app.register(sessions, { secret: 'a secret of at least thirty-two characters' })
  app.get('/', async (req) => {
    const views = (req.session.get('views') ?? 0) + 1
    req.session.set('views', views)
    return { views }
  })
  let res = await app.inject('/')
  t.equal(res.json().views, 1)
  console.log(res.headers)
  const c = res.cookies[0]
  res = await app.inject({ url: '/', cookies: { sessionid: c.value } })
  t.equal(res.json().views, 2)
  console.log(res.headers)
  await app.close()
})
