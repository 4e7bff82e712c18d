// lava_flow.hpp in use: RAII handles, exceptions, byte views.
//
// A buffer allocated with Vulkan is filled from a std::vector, exported, published by a server
// and fetched by a client in this process, imported into a second Vulkan context and into OpenGL,
// and read back; host memory travels through an fd; a timeline semaphore is signalled and waited
// on; wrong calls throw lava_flow::Error with their status. Ends with
// `RESULT: passed=N skipped=M`.
//
// Build: c++ -std=c++17 wrapper.cpp $(pkg-config --cflags --libs lava-flow) -o wrapper
#include <lava_flow.hpp>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace lf = lava_flow;

static int passed, skipped, failed;

static void expect(bool ok, const char *what) {
  if (ok) {
    ++passed;
    std::printf("ok: %s\n", what);
  } else {
    ++failed;
    std::fprintf(stderr, "FAIL: %s\n", what);
  }
}

// Runs `f`, which must throw lava_flow::Error with `want`.
template <class F>
static void expect_error(LavaFlowStatus want, const char *what, F f) {
  try {
    f();
    expect(false, what);
  } catch (const lf::Error &e) {
    expect(e.status() == want, what);
    std::printf("   (%s: %s)\n", e.status_name(), e.what());
  }
}

static std::vector<std::uint32_t> pattern(std::size_t words) {
  std::vector<std::uint32_t> v(words);
  for (std::size_t i = 0; i < words; ++i) v[i] = (static_cast<std::uint32_t>(i) * 0x9E3779B1u) ^ 0xA5A5A5A5u;
  return v;
}

static bool required(const char *api) {
  const char *v = std::getenv("LAVA_FLOW_REQUIRE");
  if (!v) return false;
  std::string s(v);
  return s.find(api) != std::string::npos || s.find("all") != std::string::npos;
}

int main() {
  try {
    auto allocator = lf::Allocator::create();
    const auto words = pattern(16 * 1024);  // 64 KiB

    // Allocate (its own allocation, so it may be published), write from a vector, export.
    auto options = lf::make<LavaFlowBufferOptions>();
    options.size = words.size() * sizeof(std::uint32_t);
    options.for_gl = 1;
    options.strategy = LAVA_FLOW_ALLOCATION_DEDICATED;
    auto buffer = allocator.buffer(options);
    buffer.write(0, words);
    auto exported = buffer.exported();
    expect(exported.kind() == LAVA_FLOW_OBJECT_BUFFER, "the export is a buffer");
    expect(exported.buffer_desc().size == options.size, "its description has the buffer's size");

    // Publish and fetch through the protocol (server and client in this process).
    std::string socket = "/tmp/lava-flow-cpp-" + std::to_string(::getpid()) + ".sock";
    auto server = lf::Server::bind(socket);
    server.publish("pattern", exported);
    auto client = lf::Client::connect(socket);
    auto received = client.wait_for("pattern", std::chrono::seconds(5));

    // Import into a second Vulkan context; read into a std::array through a view.
    auto ctx = lf::Context::open(0);
    auto imported = lf::Buffer::import(ctx, received);
    std::array<std::uint32_t, 256> head{};
    imported.read(0, head);
    expect(std::memcmp(head.data(), words.data(), sizeof head) == 0, "the second context reads the pattern");

    // OpenGL through headless EGL.
    try {
      auto desc = received.buffer_desc();
      auto gl = lf::GlContext::create(&desc.device);
      auto gl_buffer = gl.import_buffer(received);
      std::vector<std::uint32_t> back(words.size());
      gl_buffer.read(0, back);
      expect(back == words, "OpenGL reads the pattern");
    } catch (const lf::Error &e) {
      if ((e.status() == LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE || e.status() == LAVA_FLOW_ERROR_DEVICE_NOT_FOUND) &&
          !required("gl")) {
        ++skipped;
        std::printf("SKIPPED (gl unavailable): %s\n", e.what());
      } else {
        throw;
      }
    }

    // Wrong calls throw, with their status.
    expect_error(LAVA_FLOW_ERROR_INVALID_ARGUMENT, "reading past the end throws INVALID_ARGUMENT",
                 [&] { (void)imported.read(options.size - 4, 8); });
    expect_error(LAVA_FLOW_ERROR_INVALID_ARGUMENT, "a name nobody published throws INVALID_ARGUMENT",
                 [&] { (void)client.get_object("nothing"); });
    expect_error(LAVA_FLOW_ERROR_INVALID_ARGUMENT, "importing a buffer export as an image throws",
                 [&] { (void)lf::Image::import(ctx, received); });

    // Host memory through an fd: from_fd consumes the Fd on success...
    auto host = lf::HostMemory::create(4096);
    const char text[] = "shared through a memfd";
    host.write(0, lf::Bytes(text, sizeof text));
    auto mapped = lf::HostMemory::from_fd(host.dup_fd(), host.size());
    std::array<char, sizeof text> seen{};
    mapped.read(0, seen);
    expect(std::memcmp(seen.data(), text, sizeof text) == 0, "the second mapping reads the first's bytes");
    // ...and leaves it with the caller on failure.
    lf::Fd fd = host.dup_fd();
    expect_error(LAVA_FLOW_ERROR_INVALID_ARGUMENT, "mapping more than the memfd holds throws",
                 [&] { (void)lf::HostMemory::from_fd(std::move(fd), host.size() * 8); });
    expect(static_cast<bool>(fd), "the fd is still the caller's after the failure");

    // A timeline semaphore, host-signalled.
    auto timeline = lf::Semaphore::timeline(ctx, 1);
    timeline.signal(4);
    timeline.wait(4, std::chrono::seconds(1));
    expect(timeline.value() == 4, "the timeline reads 4 after the signal");
    expect_error(LAVA_FLOW_ERROR_TIMEOUT, "waiting for a value nobody signals times out",
                 [&] { timeline.wait(5, std::chrono::milliseconds(1)); });

    auto stats = server.stats();
    expect(stats.objects_sent >= 1, "the server counted what it sent");
  } catch (const lf::Error &e) {
    if (e.status() == LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE && !required("vulkan")) {
      ++skipped;
      std::printf("SKIPPED (vulkan unavailable): %s\n", e.what());
    } else {
      ++failed;
      std::fprintf(stderr, "FAIL: %s: %s\n", e.status_name(), e.what());
    }
  }
  // Every handle was released by its destructor.
  expect(lava_flow_live_handles() == 0, "no handle is left live");
  std::printf("RESULT: passed=%d skipped=%d failed=%d\n", passed, skipped, failed);
  return failed ? 1 : 0;
}
