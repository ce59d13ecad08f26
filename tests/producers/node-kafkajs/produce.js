#!/usr/bin/env node
// Example producer of traces for the sessionizer, in Node.js with KafkaJS: JSON encoding,
// keyed by session id. See docs/producers.md. Needs `npm install` (kafkajs 2.2.4).
//
//   BOOTSTRAP_SERVERS=127.0.0.1:9092 TRACES_TOPIC=traces SESSION_PREFIX=node node produce.js
//
// Produces sessions PREFIX-1..PREFIX-3 with 2, 3 and 4 turns; turn t of session s has
// inference id s-turn-t.
'use strict';

// KafkaJS 2's default partitioner is Java's murmur2 one, so keyed traces land in the
// partition the sessionizer sessionizes them in; the variable only silences its notice.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, logLevel } = require('kafkajs');

function trace(sessionId, userId, turn, atMs) {
  // inputs, output and metadata are plain JSON values in this encoding.
  return {
    inference_id: `${sessionId}-turn-${turn}`,
    session_id: sessionId,
    user_id: userId,
    timestamp_ms: atMs,
    name: 'chat',
    inputs: { user_message: `question ${turn}` },
    output: `answer ${turn}`,
    latency_ms: 120.0,
    tokens: 10 + turn,
    model: 'gpt-4o-mini',
    metadata: { example: 'node-kafkajs' },
  };
}

async function main() {
  const brokers = (process.env.BOOTSTRAP_SERVERS || '127.0.0.1:9092').split(',');
  const topic = process.env.TRACES_TOPIC || 'traces';
  const prefix = process.env.SESSION_PREFIX || 'node';
  const kafka = new Kafka({ clientId: 'trace-producer', brokers, logLevel: logLevel.WARN });
  // One request in flight keeps a session's turns in order across retries. (On a real
  // cluster `idempotent: true` does that too; the Kafka-compatible test broker, Tansu, fails
  // KafkaJS's InitProducerId v1 request.)
  const producer = kafka.producer({ maxInFlightRequests: 1 });
  await producer.connect();
  const start = Date.now();
  const messages = [];
  for (let session = 1; session <= 3; session++) {
    const sessionId = `${prefix}-${session}`;
    for (let turn = 1; turn <= session + 1; turn++) {
      const event = trace(sessionId, `user-${session}`, turn, start + turn * 1000);
      // Key: the session id, else the user id (a session stays in one partition, in order).
      messages.push({ key: sessionId, value: JSON.stringify(event) });
    }
  }
  // One request, in order; acks=-1 (all) is KafkaJS's default.
  await producer.send({ topic, messages });
  await producer.disconnect();
  console.log(`produced ${messages.length} traces`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
