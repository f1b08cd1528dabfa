// Drives one Node.js analytics SDK, unchanged, against an eventrouter host: one call of
// every type, then a flush, then one JSON line on stdout listing what was sent.
//
//   node send.mjs <sdk> <host> <writeKey> <gzip: on|off> <userId>
//
// <sdk> is "segment" (@segment/analytics-node) or "rudder" (@rudderstack/rudder-sdk-node).
// The packages are resolved from $SDK_NODE_ROOT (the folder `npm ci` installed them into,
// outside the repository). The last line of stdout is
//   {"sent": [{"type": "track", "messageId": "..."}, ...]}
// Any SDK error (a call's callback, an error event) is printed on stderr and the exit
// status is 1. Both SDKs log through the console, so only the last line is the result.
import { createRequire } from 'node:module'
import { join } from 'node:path'

const [sdk, host, writeKey, gzipFlag, userId] = process.argv.slice(2)
if (!['segment', 'rudder'].includes(sdk) || !host || !writeKey || !['on', 'off'].includes(gzipFlag) || !userId) {
  console.error('usage: node send.mjs segment|rudder <host> <writeKey> on|off <userId>')
  process.exit(2)
}
if (!process.env.SDK_NODE_ROOT) {
  console.error('SDK_NODE_ROOT must name the folder holding node_modules')
  process.exit(2)
}
const require = createRequire(join(process.env.SDK_NODE_ROOT, 'package.json'))
const gzip = gzipFlag === 'on'
const errors = []

// The same calls for both SDKs (the test checks these values in the store).
const CALLS = [
  ['track', { userId, event: 'Order Completed', properties: { revenue: 42.5, plan: 'pro' } }],
  ['identify', { userId, traits: { email: `${userId}@example.com`, plan: 'pro' } }],
  ['page', { userId, category: 'Docs', name: 'Install', properties: { path: '/docs/install' } }],
  ['screen', { userId, name: 'Home', properties: { tab: 'feed' } }],
  ['group', { userId, groupId: 'acme', traits: { name: 'Acme Inc' } }],
  ['alias', { userId, previousId: `${userId}-anon` }],
]

// @segment/analytics-node: each call's callback gets (err, ctx) once its batch is
// delivered; ctx.event.messageId is the id the SDK generated and sent.
async function sendSegment() {
  if (gzip) throw new Error('@segment/analytics-node has no gzip option')
  const { Analytics } = require('@segment/analytics-node')
  const analytics = new Analytics({ writeKey, host, maxRetries: 2 })
  analytics.on('error', (error) => errors.push(`error event: ${error.code}: ${error.reason}`))
  const delivered = CALLS.map(
    ([type, message]) =>
      new Promise((resolve) => {
        analytics[type](message, (err, ctx) => {
          if (err) errors.push(`${type} callback: ${err}`)
          resolve({ type, messageId: ctx?.event?.messageId })
        })
      }),
  )
  await analytics.closeAndFlush({ timeout: 30000 })
  return Promise.all(delivered)
}

// @rudderstack/rudder-sdk-node: a call's callback gets (err, data) where data is the
// request body (a gzip Buffer when gzip is on), so the generated messageId is read
// from the SDK's own beforeEnqueue hook, which sees every event after the SDK filled in
// messageId and returns it unchanged.
async function sendRudder() {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  const generated = []
  const analytics = new Analytics(writeKey, {
    dataPlaneUrl: host,
    gzip,
    retryCount: 2,
    logLevel: 'warn',
    errorHandler: (err) => errors.push(`errorHandler: ${err}`),
    beforeEnqueue: (event) => {
      generated.push({ type: event.type, messageId: event.messageId })
      return event
    },
  })
  const delivered = CALLS.map(
    ([type, message]) =>
      new Promise((resolve) => {
        analytics[type](message, (err) => {
          if (err) errors.push(`${type} callback: ${err}`)
          resolve()
        })
      }),
  )
  await analytics.flush()
  await Promise.all(delivered)
  return generated
}

try {
  const sent = sdk === 'segment' ? await sendSegment() : await sendRudder()
  if (errors.length) {
    console.error(errors.join('\n'))
    process.exitCode = 1
  }
  console.log(JSON.stringify({ sent }))
} catch (error) {
  console.error(`${sdk}: ${error?.stack ?? error}`)
  process.exitCode = 1
}
