import t from 'tap'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { readFileSync } from 'node:fs'
import ts from 'typescript'

const run = promisify(execFile)
const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url))
const fixture = (name: string): string => fileURLToPath(new URL(`./fixtures/types/${name}`, import.meta.url))
// the fixtures import the sources, not dist/, so they need the lib the sources are built with
const flags = ['--ignoreConfig', '--noEmit', '--strict', '--skipLibCheck', '--target', 'es2022', '--lib', 'es2023,es2024.string', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--types', 'node']

/**
 * Each fixture is its own program, since declaration merging is global to
 * a program: a provider's import must be absent from one and present in the
 * other. Every `@ts-expect-error` in them must be needed, or tsc fails.
 */
async function typeErrors (name: string): Promise<string> {
  try {
    await run(process.execPath, [tsc, ...flags, fixture(name)])
    return ''
  } catch (err) {
    return (err as { stdout: string }).stdout
  }
}

t.test('get and set are typed by SessionData; providerOptions by the provider', async (t) => {
  t.equal(await typeErrors('session-data.ts'), '')
})

t.test('editors offer the keys SessionData declares to get, set, has and delete', async (t) => {
  const file = fixture('completions.ts')
  const options: ts.CompilerOptions = { strict: true, noEmit: true, skipLibCheck: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, types: ['node'] }
  const service = ts.createLanguageService({
    getScriptFileNames: () => [file],
    getScriptVersion: () => '1',
    getScriptSnapshot: (name) => ts.sys.fileExists(name) ? ts.ScriptSnapshot.fromString(readFileSync(name, 'utf8')) : undefined,
    getCurrentDirectory: () => process.cwd(),
    getCompilationSettings: () => options,
    getDefaultLibFileName: ts.getDefaultLibFilePath,
    fileExists: ts.sys.fileExists,
    readFile: ts.sys.readFile,
    readDirectory: ts.sys.readDirectory,
    directoryExists: ts.sys.directoryExists,
    getDirectories: ts.sys.getDirectories
  })
  const text = readFileSync(file, 'utf8')
  for (const method of ['get', 'set', 'has', 'delete']) {
    const call = `request.session.${method}('`
    t.ok(text.includes(call), call)
    const offered = service.getCompletionsAtPosition(file, text.indexOf(call) + call.length, {})?.entries.map((entry) => entry.name)
    t.match(offered, ['views', 'user'], method)
  }
})

t.test("provider: 'redis' type-checks only once its module is imported", async (t) => {
  t.equal(await typeErrors('provider-without-import.ts'), '')
  t.equal(await typeErrors('provider-with-import.ts'), '')
})

t.test('the published declarations check as users compile them: bundler or nodenext resolution, exactOptionalPropertyTypes, no skipLibCheck', async (t) => {
  const published = fixture('published.ts')
  const strict = ['--ignoreConfig', '--noEmit', '--strict', '--exactOptionalPropertyTypes', '--target', 'es2022', '--types', 'node']
  for (const resolution of [['--module', 'esnext', '--moduleResolution', 'bundler'], ['--module', 'nodenext', '--moduleResolution', 'nodenext']]) {
    let output = ''
    try {
      await run(process.execPath, [tsc, ...strict, ...resolution, published])
    } catch (err) {
      output = (err as { stdout: string }).stdout
    }
    t.equal(output, '', resolution.join(' '))
  }
})
