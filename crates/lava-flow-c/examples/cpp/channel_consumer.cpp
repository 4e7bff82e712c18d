// A C++ channel consumer: connects to channel_producer.cpp's channel, receives every frame until
// the producer ends the channel, and checks each one: sequence number, metadata (length, dtype,
// shape, timestamp, user data) and every byte of its data. Frames are released as their
// lava_flow::ReadFrame goes out of scope. Ends with `RESULT: passed=N skipped=0`.
//
// Build: c++ -std=c++17 channel_consumer.cpp $(pkg-config --cflags --libs lava-flow)
// Run:   ./channel_producer /tmp/frames.sock & ./channel_consumer /tmp/frames.sock
#include <lava_flow.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

#include "channel_common.hpp"

namespace lf = lava_flow;
using namespace channel_example;

static int passed, failed;

static void expect(bool ok, std::uint64_t frame, const char *what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::fprintf(stderr, "FAIL: frame %llu: %s\n", static_cast<unsigned long long>(frame), what);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
    return 2;
  }
  try {
    lf::Consumer consumer = lf::Consumer::connect(argv[1], std::chrono::seconds(20));
    expect(consumer.slots() == kSlots && consumer.frame_size() == kFrameSize, 0, "the channel's shape");
    std::vector<std::uint32_t> words(kFrameSize / 4);
    std::uint64_t received = 0;
    while (std::optional<lf::ReadFrame> frame = consumer.recv(std::chrono::seconds(20))) {
      const std::uint64_t i = received++;
      expect(frame->sequence() == i, i, "sequence number");
      const LavaFlowFrameMetadata m = frame->metadata();
      const std::uint64_t len = frame_len(i);
      expect(m.len == len, i, "metadata len");
      expect(m.dtype_code == 1 && m.dtype_bits == 32 && m.dtype_lanes == 1, i, "metadata dtype");
      expect(m.ndim == 1 && m.shape[0] == len / 4 && m.has_strides == 0, i, "metadata shape");
      expect(m.timestamp == timestamp(i), i, "metadata timestamp");
      const std::string user = user_data(i);
      expect(m.user_len == user.size() && std::memcmp(m.user, user.data(), user.size()) == 0, i, "user data");
      frame->read(0, lf::MutableBytes(words.data(), len));
      std::uint64_t wrong = 0;
      for (std::uint64_t j = 0; j < len / 4; ++j) wrong += words[j] != word(i, j);
      expect(wrong == 0, i, "every data word");
      // A read past the frame's end is refused, and the frame stays usable.
      try {
        frame->read(kFrameSize - 2, lf::MutableBytes(words.data(), 4));
        expect(false, i, "a read past the end is refused");
      } catch (const lf::Error &e) {
        expect(e.status() == LAVA_FLOW_ERROR_INVALID_ARGUMENT, i, "a read past the end is INVALID_ARGUMENT");
      }
    }  // each frame is released here, as its ReadFrame is destroyed
    expect(received == kFrames, received, "every frame arrived before the end of the stream");
    std::printf("consumer: %llu frames checked, then the producer ended the channel\n",
                static_cast<unsigned long long>(received));
  } catch (const lf::Error &e) {
    std::fprintf(stderr, "FAIL: consumer: %s: %s\n", e.status_name(), e.what());
    return 1;
  }
  std::printf("RESULT: passed=%d skipped=0 failed=%d\n", passed, failed);
  return failed ? 1 : 0;
}
