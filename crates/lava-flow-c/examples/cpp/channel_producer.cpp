// The producing side of the C++ channel example (channel_consumer.cpp is the other process):
// a lava_flow::Producer with host-memory frames waits for one consumer, then writes and sends
// channel_example::kFrames frames with their data and metadata, and ends the channel. Ends with
// `RESULT: passed=N skipped=0`.
//
// Build: c++ -std=c++17 channel_producer.cpp $(pkg-config --cflags --libs lava-flow)
// Run:   ./channel_producer /tmp/frames.sock & ./channel_consumer /tmp/frames.sock
#include <lava_flow.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

#include "channel_common.hpp"

namespace lf = lava_flow;
using namespace channel_example;

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
    return 2;
  }
  int passed = 0;
  try {
    auto options = lf::channel_options();
    options.slots = kSlots;
    options.frame_size = kFrameSize;
    options.memory = LAVA_FLOW_FRAME_MEMORY_HOST;
    auto producer = lf::Producer::create(argv[1], &options);
    producer.wait_for_consumers(1, std::chrono::seconds(20));
    std::printf("producer: a consumer connected\n");
    std::vector<std::uint32_t> words(kFrameSize / 4);
    for (std::uint32_t i = 0; i < kFrames; ++i) {
      lf::WriteFrame frame = producer.acquire(std::chrono::seconds(20));
      if (frame.capacity() != kFrameSize) throw std::runtime_error("a frame's capacity is not the frame size");
      const std::uint64_t len = frame_len(i);
      for (std::uint64_t j = 0; j < len / 4; ++j) words[j] = word(i, j);
      frame.write(0, lf::Bytes(words.data(), len));
      auto m = lf::frame_metadata(len);
      m.dtype_code = 1;  // DLPack uint
      m.dtype_bits = 32;
      m.dtype_lanes = 1;
      m.ndim = 1;
      m.shape[0] = len / 4;
      m.timestamp = timestamp(i);
      const std::string user = user_data(i);
      m.user_len = static_cast<std::uint32_t>(user.size());
      std::memcpy(m.user, user.data(), user.size());
      frame.send(m);
      ++passed;
    }
    producer.finish(std::chrono::seconds(20));
    std::printf("producer: sent %u frames and ended the channel\n", kFrames);
  } catch (const lf::Error &e) {
    std::fprintf(stderr, "FAIL: producer: %s: %s\n", e.status_name(), e.what());
    return 1;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "FAIL: producer: %s\n", e.what());
    return 1;
  }
  std::printf("RESULT: passed=%d skipped=0\n", passed);
  return 0;
}
