//! Channels between MPI ranks (`lava_flow::remote`), under a real `mpirun -n 2` of Open MPI: each
//! test starts `mpirun`, which runs this test binary twice as ranks 0 (sender) and 1 (receiver),
//! each running `mpi_rank` with the case named in `LAVA_FLOW_MPI_CASE`. Over Open MPI's
//! shared-memory transport (vader) and forced TCP loopback. Skips without `mpirun` (fails where
//! `LAVA_FLOW_REQUIRE` names `mpi`).
#![cfg(feature = "mpi")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lava_flow::channel::run::{check_pattern, fill_pattern};
use lava_flow::channel::{relay, Channel, ChannelOptions, FrameMemory, Metadata};
use lava_flow::remote::{MpiContext, MpiReceiver, MpiSender, ReceiverOptions, Source, MAX_METADATA};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, Error, VulkanContext};
use lava_flow_diag::testing;

const CASE: &str = "LAVA_FLOW_MPI_CASE";

/// How long one `mpirun` may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs `case` under `mpirun -n 2` over `btl`; returns (success, output).
fn mpirun(case: &str, btl: &str) -> Option<(bool, String)> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        testing::skip("mpi", "no `mpirun` on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let out_path = std::env::temp_dir().join(format!("lava-flow-mpi-{case}-{btl}-{}.log", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("mpirun")
        .args(["-n", "2", "--oversubscribe", "--mca", "btl", btl, "-x", CASE])
        .arg(&exe)
        .args(["--exact", "mpi_rank", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("mpirun starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            panic!("mpirun of case {case} over {btl} hung for {LIMIT:?}; its output:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    println!("mpirun {case} over {btl}: {status}, {:.1} s", started.elapsed().as_secs_f64());
    Some((status.success(), text))
}

fn passes(case: &str, btl: &str) {
    if let Some((ok, text)) = mpirun(case, btl) {
        println!("{text}");
        assert!(ok, "case {case} over {btl} failed:\n{text}");
        assert_eq!(text.matches("case passed").count(), 2, "both ranks ran the case:\n{text}");
    }
}

#[test]
fn host_frames_arrive_in_order_and_intact_over_shared_memory() {
    passes("order", "self,vader");
}

#[test]
fn host_frames_arrive_in_order_and_intact_over_tcp() {
    passes("order", "self,tcp");
}

#[test]
fn large_frames_travel_in_chunks() {
    passes("chunks", "self,vader");
}

#[test]
fn vulkan_buffers_are_staged_through_host_memory_both_ends() {
    passes("buffers", "self,vader");
}

#[test]
fn vulkan_images_cross_ranks_texel_for_texel() {
    passes("images", "self,vader");
}

#[test]
fn backpressure_holds_the_sender_until_the_receiver_frees_a_slot() {
    passes("backpressure", "self,vader");
}

#[test]
fn a_stalled_receiver_gives_the_sender_a_timeout_and_a_closed_one_an_error() {
    passes("stalled", "self,vader");
}

#[test]
fn malformed_messages_are_refused_and_the_stream_stays_broken() {
    passes("malformed", "self,vader");
}

#[test]
fn a_channel_relayed_between_ranks_delivers_every_frame_with_its_metadata() {
    passes("relay", "self,vader");
}

#[test]
fn a_channel_number_can_be_used_again_after_its_stream_ended() {
    passes("reconnect", "self,vader");
}

#[test]
fn a_rank_killed_mid_stream_ends_the_job_without_a_hang() {
    if let Some((ok, text)) = mpirun("killed", "self,vader") {
        assert!(!ok, "the job must fail when a rank dies:\n{text}");
        assert!(text.contains("rank 1 starts dying"), "{text}");
        assert!(!text.contains("case passed"), "{text}");
    }
}

/// One rank of a case; does nothing when the test binary runs on its own.
#[test]
fn mpi_rank() {
    let Ok(case) = std::env::var(CASE) else { return };
    // A failed assertion in any thread of a rank ends the whole job at once (mpirun tears it down
    // when a rank aborts) instead of leaving the other rank waiting for this one.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
    let mpi = MpiContext::initialize().expect("MPI initializes");
    assert_eq!(mpi.size(), 2);
    let rank = mpi.rank();
    match case.as_str() {
        "order" => order(&mpi, rank),
        "chunks" => chunks(&mpi, rank),
        "buffers" => buffers(&mpi, rank),
        "backpressure" => backpressure(&mpi, rank),
        "stalled" => stalled(&mpi, rank),
        "malformed" => malformed(&mpi, rank),
        "killed" => killed(&mpi, rank),
        "relay" => relay(&mpi, rank),
        "reconnect" => reconnect(&mpi, rank),
        "images" => images(&mpi, rank),
        other => panic!("unknown case {other}"),
    }
    mpi.barrier();
    println!("rank {rank}: case passed");
}

/// The bytes of frame `seq`: its number, then a pattern that depends on it.
fn frame(seq: u64, len: usize) -> Vec<u8> {
    let mut out = common::pattern(len, seq as u32);
    let head = seq.to_le_bytes();
    let n = head.len().min(len);
    out[..n].copy_from_slice(&head[..n]);
    out
}

const ORDER_FRAMES: u64 = 100_000;

fn order(mpi: &MpiContext, rank: i32) {
    // Every rank finds the other by host name (both run here).
    assert_eq!(mpi.rank_of_host(&mpi.host_name()), Some(0));
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 7, Duration::from_secs(30)).unwrap();
        for seq in 0..ORDER_FRAMES {
            let len = 16 + (seq % 241) as usize;
            assert_eq!(tx.send(Source::Host(&frame(seq, len)), &seq.to_le_bytes()).unwrap(), seq);
        }
    } else {
        let rx = MpiReceiver::new(mpi, 0, 7, &ReceiverOptions::new(4096).slots(16)).unwrap();
        let (mut fds, mut rss) = (0, 0);
        for seq in 0..ORDER_FRAMES {
            if seq == 1000 {
                (fds, rss) = (testing::open_fd_count(), resident_kib());
            }
            let got = rx.recv().unwrap().expect("a frame before the end");
            let len = 16 + (seq % 241) as usize;
            assert_eq!(got.info().sequence, seq);
            assert_eq!(got.metadata(), seq.to_le_bytes());
            assert!(got.bytes() == frame(seq, len), "frame {seq} differs");
        }
        assert!(rx.recv().unwrap().is_none(), "the stream ends after the sender drops");
        // Bounded memory: what the first 1000 frames set up is all there is.
        let (fds_after, rss_after) = (testing::open_fd_count(), resident_kib());
        assert_eq!(fds_after, fds, "open fds from frame 1000 to the end");
        assert!(rss_after <= rss + 1024, "resident memory grew from {rss} to {rss_after} KiB over the frames");
        println!(
            "{ORDER_FRAMES} frames in order, each checked; fds {fds} -> {fds_after}, RSS {rss} -> {rss_after} KiB"
        );
    }
}

fn chunks(mpi: &MpiContext, rank: i32) {
    let sizes = [10 << 20, (3 << 20) + 17, 1, 65536, 65537];
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 1, Duration::from_secs(30)).unwrap();
        for (seq, &len) in sizes.iter().enumerate() {
            tx.send(Source::Host(&frame(seq as u64, len)), b"").unwrap();
        }
    } else {
        let options = ReceiverOptions::new(10 << 20).slots(2).chunk(64 << 10);
        let rx = MpiReceiver::new(mpi, 0, 1, &options).unwrap();
        for (seq, &len) in sizes.iter().enumerate() {
            let got = rx.recv().unwrap().unwrap();
            assert_eq!(got.bytes().len(), len);
            assert!(got.bytes() == frame(seq as u64, len), "frame {seq} of {len} bytes differs");
        }
        assert!(rx.recv().unwrap().is_none());
    }
}

fn buffers(mpi: &MpiContext, rank: i32) {
    let ctx = VulkanContext::new().expect("Vulkan (lavapipe) on both ranks");
    let sizes: [u64; 3] = [4 << 20, (1 << 20) + 12, 256];
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 2, Duration::from_secs(30)).unwrap();
        for (seq, &len) in sizes.iter().enumerate() {
            let mut buffer = Buffer::new(&ctx, &BufferOptions::new(len)).unwrap();
            buffer.write(0, &frame(seq as u64, len as usize)).unwrap();
            tx.send(Source::Buffer(&buffer), b"device").unwrap();
        }
    } else {
        let options = ReceiverOptions::new(4 << 20).slots(2).chunk(256 << 10);
        let rx = MpiReceiver::new(mpi, 0, 2, &options).unwrap();
        let mut buffer = Buffer::new(&ctx, &BufferOptions::new(4 << 20)).unwrap();
        for (seq, &len) in sizes.iter().enumerate() {
            let info = rx.recv_into(&mut buffer, Duration::from_secs(30)).unwrap().unwrap();
            assert_eq!((info.sequence, info.len, &info.metadata[..]), (seq as u64, len, &b"device"[..]));
            assert!(buffer.read(0, len).unwrap() == frame(seq as u64, len as usize), "frame {seq} differs");
        }
        assert!(rx.recv_into(&mut buffer, Duration::from_secs(30)).unwrap().is_none());
    }
}

fn backpressure(mpi: &MpiContext, rank: i32) {
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 3, Duration::from_secs(30)).unwrap();
        assert_eq!(tx.credits(), 2);
        tx.send(Source::Host(&frame(0, 64)), b"").unwrap();
        tx.send(Source::Host(&frame(1, 64)), b"").unwrap();
        // Bad input first: refused before any credit is spent.
        let big = tx.send(Source::Host(&vec![0; 1025]), b"").unwrap_err();
        assert!(matches!(big, Error::InvalidArgument { .. }) && big.to_string().contains("at most 1024"), "{big}");
        let meta = tx.send(Source::Host(&[1]), &[0; MAX_METADATA + 1]).unwrap_err();
        assert!(meta.to_string().contains("metadata"), "{meta}");
        // The receiver holds both frames until the barrier: no credit can come.
        assert_eq!(tx.try_send(Source::Host(&frame(2, 64)), b"").unwrap(), None);
        let late = tx.send_timeout(Source::Host(&frame(2, 64)), b"", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(late, Error::Timeout { .. }) && late.to_string().contains("free a slot"), "{late}");
        mpi.barrier();
        tx.send_timeout(Source::Host(&frame(2, 64)), b"", Duration::from_secs(30)).unwrap();
    } else {
        let rx = MpiReceiver::new(mpi, 0, 3, &ReceiverOptions::new(1024).slots(2)).unwrap();
        let a = rx.recv().unwrap().unwrap();
        let b = rx.recv().unwrap().unwrap();
        let full = rx.recv().unwrap_err();
        assert!(full.to_string().contains("slots are held"), "{full}");
        mpi.barrier();
        drop(a);
        let c = rx.recv().unwrap().unwrap();
        assert_eq!((b.info().sequence, c.info().sequence), (1, 2));
        assert!(c.bytes() == frame(2, 64));
    }
}

fn stalled(mpi: &MpiContext, rank: i32) {
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 4, Duration::from_secs(30)).unwrap();
        tx.send(Source::Host(&[1; 8]), b"").unwrap();
        // The receiver takes the frame but never drops it: the sender waits for a slot, in vain.
        let started = Instant::now();
        let err = tx.send_timeout(Source::Host(&[2; 8]), b"", Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        println!("stalled receiver: {err}");
        mpi.barrier();
        // Then the receiver goes away: the next send says so.
        mpi.barrier();
        let err = tx.send_timeout(Source::Host(&[3; 8]), b"", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::PeerRefused { .. }) && err.to_string().contains("closed"), "{err}");
        println!("closed receiver: {err}");
        // A receiver that never appears: the greeting times out.
        let err = MpiSender::connect(mpi, 1, 5, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }) && err.to_string().contains("greet"), "{err}");
        assert!(MpiSender::connect(mpi, 0, 5, Duration::ZERO).unwrap_err().to_string().contains("another rank"));
    } else {
        let rx = MpiReceiver::new(mpi, 0, 4, &ReceiverOptions::new(64).slots(1)).unwrap();
        let held = rx.recv().unwrap().unwrap();
        mpi.barrier();
        drop(held);
        drop(rx);
        mpi.barrier();
        let err = MpiReceiver::new(mpi, 0, 6, &ReceiverOptions::new(u64::MAX / 2).slots(4)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. } | Error::OutOfMemory { .. }), "{err}");
        assert!(MpiReceiver::new(mpi, 0, 6, &ReceiverOptions::new(64).slots(0)).is_err());
        assert!(MpiReceiver::new(mpi, 0, 6, &ReceiverOptions::new(64).chunk(0)).is_err());
    }
}

fn malformed(mpi: &MpiContext, rank: i32) {
    use mpi_sys_free::send_raw;
    if rank == 0 {
        let tx = MpiSender::connect(mpi, 1, 9, Duration::from_secs(30)).unwrap();
        // Garbage on the channel's frame tag (1000 + 2 * 9), where a header is due.
        send_raw(mpi, 1, 1018, b"not a lava-flow header");
        mpi.barrier();
        drop(tx);
    } else {
        let rx = MpiReceiver::new(mpi, 0, 9, &ReceiverOptions::new(64).slots(1)).unwrap();
        let err = rx.recv().unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }) && err.to_string().contains("magic"), "{err}");
        let again = rx.recv().unwrap_err();
        assert!(again.to_string().contains("broke earlier"), "{again}");
        println!("malformed: {err}");
        mpi.barrier();
    }
}

/// Sending bytes outside lava-flow, as a buggy or foreign program on the same tags would.
mod mpi_sys_free {
    use lava_flow::remote::mpi::point_to_point::Destination;
    use lava_flow::remote::mpi::topology::Communicator;
    use lava_flow::remote::MpiContext;

    pub fn send_raw(mpi: &MpiContext, rank: i32, tag: i32, bytes: &[u8]) {
        mpi.universe().world().process_at_rank(rank).send_with_tag(bytes, tag);
    }
}

fn killed(mpi: &MpiContext, rank: i32) {
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 11, Duration::from_secs(30)).unwrap();
        for seq in 0.. {
            // Ends when mpirun tears the job down after rank 1 dies.
            if tx.send_timeout(Source::Host(&frame(seq, 4096)), b"", Duration::from_secs(60)).is_err() {
                std::process::exit(3);
            }
        }
    } else {
        let rx = MpiReceiver::new(mpi, 0, 11, &ReceiverOptions::new(4096).slots(4)).unwrap();
        for _ in 0..100 {
            drop(rx.recv().unwrap().unwrap());
        }
        println!("rank 1 starts dying");
        std::process::abort();
    }
}

const RELAY_FRAMES: u64 = 500;
const RELAY_SIZE: u64 = 64 << 10;

fn relay_options(memory: FrameMemory) -> ChannelOptions {
    ChannelOptions {
        slots: 4,
        frame_size: RELAY_SIZE,
        memory,
        timeout: Duration::from_secs(30),
        ..ChannelOptions::default()
    }
}

/// Host A: a producer (Vulkan frames) and `relay::forward` as its consumer; host B:
/// `relay::serve` into a producer of host frames, and a consumer checking every frame.
fn relay(mpi: &MpiContext, rank: i32) {
    let dir = std::env::temp_dir().join(format!("lava-flow-relay-{}-{rank}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("channel.sock");
    if rank == 0 {
        let path = socket.clone();
        let producer = std::thread::spawn(move || {
            let mut producer = Channel::producer(&path, relay_options(FrameMemory::Vulkan(MemoryKind::HostVisible)))?;
            producer.wait_for_consumers(1, Duration::from_secs(30))?;
            let mut bytes = vec![0u8; RELAY_SIZE as usize];
            for k in 0..RELAY_FRAMES {
                let len = RELAY_SIZE - (k % 7) * 8;
                fill_pattern(&mut bytes[..len as usize], k);
                let mut frame = producer.acquire()?;
                frame.write(0, &bytes[..len as usize])?;
                frame.send(Metadata { len, timestamp: k, user: k.to_le_bytes().to_vec(), ..Metadata::default() })?;
            }
            producer.finish(Duration::from_secs(30)).map(|_| ())
        });
        let consumer = Channel::consumer(&socket, relay_options(FrameMemory::Host)).unwrap();
        let mut tx = MpiSender::connect(mpi, 1, 20, Duration::from_secs(30)).unwrap();
        let stats = relay::forward(&consumer, &mut tx, None).unwrap();
        assert_eq!(stats.frames, RELAY_FRAMES);
        drop(tx);
        producer.join().unwrap().unwrap();
    } else {
        let rx = MpiReceiver::new(mpi, 0, 20, &ReceiverOptions::new(RELAY_SIZE).slots(4)).unwrap();
        let path = socket.clone();
        let checker = std::thread::spawn(move || -> lava_flow::Result<u64> {
            let consumer = Channel::consumer(&path, relay_options(FrameMemory::Host))?;
            let mut bytes = vec![0u8; RELAY_SIZE as usize];
            let mut seen = 0;
            loop {
                let frame = match consumer.recv() {
                    Ok(frame) => frame,
                    Err(Error::Closed { clean: true, .. }) => return Ok(seen),
                    Err(e) => return Err(e),
                };
                let k = seen;
                let len = RELAY_SIZE - (k % 7) * 8;
                assert!(frame.host_memory().is_some(), "host B's frames are its own pool's host memory");
                assert_eq!((frame.len(), frame.metadata().timestamp), (len, k));
                assert_eq!(frame.metadata().user, k.to_le_bytes());
                frame.read_into(0, &mut bytes[..len as usize])?;
                check_pattern(&bytes[..len as usize], k)?;
                seen += 1;
            }
        });
        let mut producer = Channel::producer(&socket, relay_options(FrameMemory::Host)).unwrap();
        producer.wait_for_consumers(1, Duration::from_secs(30)).unwrap();
        let stats = relay::serve(&rx, &mut producer, Duration::from_secs(30)).unwrap();
        assert_eq!(stats.frames, RELAY_FRAMES);
        producer.finish(Duration::from_secs(30)).unwrap();
        assert_eq!(checker.join().unwrap().unwrap(), RELAY_FRAMES);
        println!("{RELAY_FRAMES} frames relayed from host A's channel to host B's, each checked");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two sessions on one channel number: the first receiver's last credits, which its sender never
/// read, must not confuse the second sender.
fn reconnect(mpi: &MpiContext, rank: i32) {
    for session in 0..2u64 {
        if rank == 0 {
            let mut tx = MpiSender::connect(mpi, 1, 30, Duration::from_secs(30)).unwrap();
            assert_eq!(tx.credits(), 4, "session {session} starts with the new receiver's credits");
            for seq in 0..4 {
                tx.send(Source::Host(&frame(seq + 10 * session, 100)), b"").unwrap();
            }
        } else {
            let rx = MpiReceiver::new(mpi, 0, 30, &ReceiverOptions::new(100).slots(4)).unwrap();
            for seq in 0..4 {
                let got = rx.recv().unwrap().unwrap();
                assert!(got.bytes() == frame(seq + 10 * session, 100));
            }
            assert!(rx.recv().unwrap().is_none());
        }
        mpi.barrier();
    }
}

/// Optimal-tiling images of two formats and shapes, each sent texel for texel and checked; an
/// image of another extent on the receiving side is refused with the reason.
fn images(mpi: &MpiContext, rank: i32) {
    use lava_flow::raw_gpu_handle::TextureFormat;
    use lava_flow::{Image, ImageOptions};
    let ctx = VulkanContext::new().expect("Vulkan (lavapipe) on both ranks");
    let shapes = [(TextureFormat::Rgba8Unorm, 64u32, 48u32), (TextureFormat::R32Float, 128, 128)];
    if rank == 0 {
        let mut tx = MpiSender::connect(mpi, 1, 12, Duration::from_secs(30)).unwrap();
        for (i, &(format, w, h)) in shapes.iter().enumerate() {
            let image = Image::new(&ctx, &ImageOptions::d2(format, w, h)).unwrap();
            let len = image.download().unwrap().len();
            image.upload(&frame(i as u64, len)).unwrap();
            tx.send_image(&image, b"image").unwrap();
        }
        // A third image that the receiver takes into one of another extent.
        let image = Image::new(&ctx, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 16, 16)).unwrap();
        tx.send_image(&image, b"").unwrap();
    } else {
        let rx = MpiReceiver::new(mpi, 0, 12, &ReceiverOptions::new(128 * 128 * 4).slots(2)).unwrap();
        for (i, &(format, w, h)) in shapes.iter().enumerate() {
            let image = Image::new(&ctx, &ImageOptions::d2(format, w, h)).unwrap();
            let info = rx.recv_image(&image, Duration::from_secs(30)).unwrap().unwrap();
            let texels = image.download().unwrap();
            assert_eq!((info.sequence, info.len), (i as u64, texels.len() as u64));
            assert!(texels == frame(i as u64, texels.len()), "image {i} differs");
        }
        let other = Image::new(&ctx, &ImageOptions::d2(TextureFormat::Rgba8Unorm, 8, 8)).unwrap();
        let err = rx.recv_image(&other, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("frame 2"), "{err}");
        println!("images: {err}");
    }
}

/// This process's resident memory, KiB (`/proc/self/statm`'s second field, in pages).
fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * (rustix::param::page_size() as u64) / 1024
}
