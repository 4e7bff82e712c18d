// What channel_producer.cpp sends and channel_consumer.cpp checks: frame `i` holds
// `frame_len(i)` bytes of `word(i, j)` words, described as a 1-D array of uint32, with the
// timestamp `1000 * i + 7` and the user data "frame <i>".
#ifndef LAVA_FLOW_CHANNEL_COMMON_HPP
#define LAVA_FLOW_CHANNEL_COMMON_HPP

#include <cstdint>
#include <string>

namespace channel_example {

constexpr std::uint32_t kSlots = 4;
constexpr std::uint64_t kFrameSize = 64 * 1024;
constexpr std::uint32_t kFrames = 48;

inline std::uint32_t word(std::uint64_t frame, std::uint64_t j) {
  return static_cast<std::uint32_t>((frame * 0x9E3779B1u) ^ (j * 0x85EBCA77u) ^ 0xA5A5A5A5u);
}

/// Bytes of data in frame `i`: a multiple of 4 between 4 KiB and the frame size.
inline std::uint64_t frame_len(std::uint64_t i) { return kFrameSize - (i % 15) * 4096; }

inline std::uint64_t timestamp(std::uint64_t i) { return 1000 * i + 7; }

inline std::string user_data(std::uint64_t i) { return "frame " + std::to_string(i); }

}  // namespace channel_example

#endif
