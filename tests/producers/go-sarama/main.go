// Example producer of traces for the sessionizer, in Go with sarama: JSON encoding, keyed by
// session id, partitioned by murmur2 like Java's default partitioner. See docs/producers.md.
//
//	BOOTSTRAP_SERVERS=127.0.0.1:9092 TRACES_TOPIC=traces SESSION_PREFIX=go go run .
//
// It produces sessions PREFIX-1..PREFIX-3 with 2, 3 and 4 turns; turn t of session s has
// inference id s-turn-t. The import path is github.com/Shopify/sarama up to sarama 1.37 (as
// Debian packages it) and github.com/IBM/sarama from 1.38 on; the code is the same.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/Shopify/sarama"
)

// Trace holds the fields of schemas/trace_event.schema.json this example sets. inputs,
// output and metadata are JSON values here (in Avro they would be JSON text).
type Trace struct {
	InferenceID string                 `json:"inference_id"`
	UserID      string                 `json:"user_id"`
	SessionID   string                 `json:"session_id"`
	TimestampMs int64                  `json:"timestamp_ms"`
	Name        string                 `json:"name"`
	Inputs      map[string]interface{} `json:"inputs"`
	Output      interface{}            `json:"output"`
	LatencyMs   float64                `json:"latency_ms"`
	Tokens      int64                  `json:"tokens"`
	Model       string                 `json:"model"`
}

// murmur2 is Kafka's murmur2 hash (Java's Utils.murmur2).
func murmur2(data []byte) int32 {
	const seed uint32 = 0x9747b28c
	const m uint32 = 0x5bd1e995
	const r = 24
	length := len(data)
	h := seed ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := length &^ 3
	switch length & 3 {
	case 3:
		h ^= uint32(data[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// murmur2Partitioner picks the partition Java's default partitioner picks for a keyed record:
// (murmur2(key) & 0x7fffffff) % partitions. sarama's own hash partitioners use FNV-1a.
type murmur2Partitioner struct{ fallback sarama.Partitioner }

func newMurmur2Partitioner(topic string) sarama.Partitioner {
	return &murmur2Partitioner{fallback: sarama.NewRandomPartitioner(topic)}
}

func (p *murmur2Partitioner) Partition(message *sarama.ProducerMessage, partitions int32) (int32, error) {
	if message.Key == nil {
		return p.fallback.Partition(message, partitions)
	}
	key, err := message.Key.Encode()
	if err != nil {
		return -1, err
	}
	return (murmur2(key) & 0x7fffffff) % partitions, nil
}

func (p *murmur2Partitioner) RequiresConsistency() bool { return true }

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func main() {
	bootstrap := env("BOOTSTRAP_SERVERS", "127.0.0.1:9092")
	topic := env("TRACES_TOPIC", "traces")
	prefix := env("SESSION_PREFIX", "go")

	config := sarama.NewConfig()
	config.Version = sarama.V2_1_0_0
	config.Producer.Return.Successes = true
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Partitioner = newMurmur2Partitioner
	producer, err := sarama.NewSyncProducer([]string{bootstrap}, config)
	if err != nil {
		log.Fatalf("producer: %v", err)
	}
	defer producer.Close()

	start := time.Now().UnixNano() / int64(time.Millisecond)
	sent := 0
	for session := 1; session <= 3; session++ {
		sessionID := fmt.Sprintf("%s-%d", prefix, session)
		for turn := 1; turn <= session+1; turn++ {
			trace := Trace{
				InferenceID: fmt.Sprintf("%s-turn-%d", sessionID, turn),
				UserID:      fmt.Sprintf("user-%d", session),
				SessionID:   sessionID,
				TimestampMs: start + int64(turn)*1000,
				Name:        "chat",
				Inputs:      map[string]interface{}{"user_message": fmt.Sprintf("question %d", turn)},
				Output:      fmt.Sprintf("answer %d", turn),
				LatencyMs:   120,
				Tokens:      int64(10 + turn),
				Model:       "gpt-4o-mini",
			}
			value, err := json.Marshal(trace)
			if err != nil {
				log.Fatalf("encode: %v", err)
			}
			// The key keeps a session in one partition, in order: session id, else user id.
			_, _, err = producer.SendMessage(&sarama.ProducerMessage{
				Topic: topic,
				Key:   sarama.StringEncoder(sessionID),
				Value: sarama.ByteEncoder(value),
			})
			if err != nil {
				log.Fatalf("send: %v", err)
			}
			sent++
		}
	}
	fmt.Printf("produced %d traces\n", sent)
}
