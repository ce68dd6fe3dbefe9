//! The poll loop's batch reader against the real Kafka: every record of a transactional
//! stream arrives once, in partition order, with its key and payload intact, and offset
//! commits answer on the reader's own queue and reach the consumer group.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::model::{generate, StreamSpec};
use common::{produce, TestEnv};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tally_node::ingest::{records_for, Target};
use tally_node::partitioner::partition_for;
use tally_node::source::consumer_config;
use tally_node::source::reader::Reader;

/// (topic, partition) -> (key, payload) in the order they were read.
type ByPartition = HashMap<(String, i32), Vec<(Vec<u8>, Vec<u8>)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_record_once_in_partition_order_and_commits_answer() {
    let env = TestEnv::new("reader", 3);
    let events = generate(&StreamSpec {
        seed: 11,
        events: 5_000,
        players: 200,
        channels: 8,
        start_ts: 1_700_000_000_000,
    });
    produce(&env.producer(), &events, 700).await;

    let mut expected = ByPartition::new();
    for e in &events {
        for r in records_for(e) {
            let topic = match r.target {
                Target::Players => env.player_topic.clone(),
                _ => env.channel_topic.clone(),
            };
            let partition = partition_for(&r.key, env.partitions);
            expected
                .entry((topic, partition))
                .or_default()
                .push((r.key.into_bytes(), r.payload));
        }
    }
    let total: usize = expected.values().map(Vec::len).sum();

    let consumer: Arc<BaseConsumer> = Arc::new(
        consumer_config(&env.kafka_config(), "reader-test")
            .create()
            .unwrap(),
    );
    let mut tpl = TopicPartitionList::new();
    for topic in [&env.player_topic, &env.channel_topic] {
        for p in 0..env.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut reader =
        Reader::new(consumer.clone(), std::num::NonZeroUsize::new(300).unwrap()).unwrap();

    let mut read = ByPartition::new();
    let mut last_offset: HashMap<(String, i32), i64> = HashMap::new();
    let (mut n, mut batches) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while n < total && Instant::now() < deadline {
        let (got, _) = reader.read(Duration::from_millis(100), |m| {
            let m = m.expect("no kafka error");
            let tp = (m.topic.to_string(), m.partition);
            let before = last_offset.insert(tp.clone(), m.offset);
            assert!(before < Some(m.offset), "offsets go forward in {tp:?}");
            read.entry(tp).or_default().push((
                m.key.expect("a key").to_vec(),
                m.payload.expect("a payload").to_vec(),
            ));
        });
        assert!(got <= 300, "a read stays within the batch size");
        n += got;
        batches += (got > 0) as usize;
    }
    assert_eq!(n, total, "every record read");
    assert!(
        batches < total / 10,
        "records came in batches ({batches} reads for {total} records)"
    );
    // Nothing more: each record once.
    let (more, _) = reader.read(Duration::from_millis(500), |_| {});
    assert_eq!(more, 0);
    assert_eq!(read, expected);

    // Commit the positions; the answer arrives on the reader's queue.
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &last_offset {
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            .unwrap();
    }
    reader.commit(&offsets).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let answers = loop {
        let answers = reader.take_commit_results();
        if !answers.is_empty() || Instant::now() > deadline {
            break answers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answers.len(), 1, "one answer for one commit");
    answers[0].as_ref().expect("commit succeeded");
    // Reading goes on after a commit answered (its reply never reaches the consumer queue).
    let (after, _) = reader.read(Duration::from_millis(200), |_| {});
    assert_eq!(after, 0);
    let committed = env.kafka_commits();
    for (topic, partition, at) in committed {
        let want = last_offset
            .get(&(topic.clone(), partition))
            .map_or(-1, |o| o + 1);
        assert_eq!(at, want, "committed offset of {topic}/{partition}");
    }
}
