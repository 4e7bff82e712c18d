// lava_flow.hpp: a header-only C++17 wrapper over lava_flow.h (lava-flow's C API).
//
// - RAII: each class owns one C handle and destroys it in its destructor; classes are move-only.
// - Errors are exceptions: every failing call throws lava_flow::Error, which carries the
//   LavaFlowStatus and the library's message (what was asked, what refused it, what to do).
// - Byte ranges are lava_flow::Bytes / lava_flow::MutableBytes (pointer + size; C++17 has no
//   std::span), made from a pointer and a size or from any contiguous container (std::vector,
//   std::array, std::string).
// - fds are lava_flow::Fd (closes on destruction). Functions that take an Fd by rvalue consume it
//   on success and leave it in the Fd on failure (the exception is thrown, the Fd still owns it),
//   as the C functions do.
//
// docs/C.md is the guide. Link as for the C API: `pkg-config --cflags --libs lava-flow`.
#ifndef LAVA_FLOW_HPP
#define LAVA_FLOW_HPP

#include <lava_flow.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace lava_flow {

/// A failed call: its status and message.
class Error : public std::runtime_error {
 public:
  Error(LavaFlowStatus status, const std::string &message) : std::runtime_error(message), status_(status) {}
  /// The C status code.
  LavaFlowStatus status() const noexcept { return status_; }
  /// Its name ("LAVA_FLOW_ERROR_INVALID_ARGUMENT").
  const char *status_name() const noexcept { return lava_flow_status_name(status_); }

 private:
  LavaFlowStatus status_;
};

/// Throws lava_flow::Error for a status other than LAVA_FLOW_OK.
inline void check(LavaFlowStatus status) {
  if (status != LAVA_FLOW_OK) throw Error(status, lava_flow_last_error());
}

/// A view of contiguous elements: pointer and count (std::span's role in C++17).
template <class T>
class View {
 public:
  constexpr View() noexcept = default;
  constexpr View(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
  /// Any contiguous container with data() and size() (std::vector, std::array, std::string).
  template <class C, class = std::enable_if_t<std::is_convertible_v<decltype(std::declval<C &>().data()), T *>>>
  constexpr View(C &container) noexcept : data_(container.data()), size_(container.size()) {}
  constexpr T *data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr T *begin() const noexcept { return data_; }
  constexpr T *end() const noexcept { return data_ + size_; }
  constexpr T &operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  T *data_ = nullptr;
  std::size_t size_ = 0;
};

/// Bytes to read from.
class Bytes : public View<const std::uint8_t> {
 public:
  Bytes() noexcept = default;
  Bytes(const void *data, std::size_t size) noexcept : View(static_cast<const std::uint8_t *>(data), size) {}
  template <class C, class = decltype(std::declval<const C &>().data()),
            class = std::enable_if_t<std::is_trivially_copyable_v<typename C::value_type>>>
  Bytes(const C &c) noexcept : View(reinterpret_cast<const std::uint8_t *>(c.data()), c.size() * sizeof(typename C::value_type)) {}
};

/// Bytes to write into.
class MutableBytes : public View<std::uint8_t> {
 public:
  MutableBytes() noexcept = default;
  MutableBytes(void *data, std::size_t size) noexcept : View(static_cast<std::uint8_t *>(data), size) {}
  template <class C, class = decltype(std::declval<C &>().data()),
            class = std::enable_if_t<!std::is_const_v<std::remove_pointer_t<decltype(std::declval<C &>().data())>> &&
                                     std::is_trivially_copyable_v<typename C::value_type>>>
  MutableBytes(C &c) noexcept : View(reinterpret_cast<std::uint8_t *>(c.data()), c.size() * sizeof(typename C::value_type)) {}
};

/// A versioned C struct, zeroed, with struct_size set: `auto o = make<LavaFlowBufferOptions>();`.
template <class T>
T make() noexcept {
  T value{};
  value.struct_size = sizeof(T);
  return value;
}

/// An owned fd: closed on destruction unless released.
class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd &operator=(Fd &&o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd &) = delete;
  Fd &operator=(const Fd &) = delete;
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  /// Gives the fd up (the caller owns it).
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

namespace detail {
/// One C handle, destroyed with D.
template <class H, LavaFlowStatus (*D)(H *)>
class Owned {
 public:
  Owned() noexcept = default;
  explicit Owned(H *h) noexcept : h_(h) {}
  Owned(Owned &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Owned &operator=(Owned &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  Owned(const Owned &) = delete;
  Owned &operator=(const Owned &) = delete;
  ~Owned() { reset(); }
  /// Destroys the handle now (a destructor cannot throw: the status is dropped).
  void reset() noexcept {
    if (h_) (void)D(h_);
    h_ = nullptr;
  }
  H *get() const noexcept { return h_; }
  H *release() noexcept { return std::exchange(h_, nullptr); }
  explicit operator bool() const noexcept { return h_ != nullptr; }

 private:
  H *h_ = nullptr;
};
}  // namespace detail

#define LAVA_FLOW_HPP_HANDLE(Class, CType, destroy)                         \
 public:                                                                   \
  Class() noexcept = default;                                              \
  explicit Class(CType *h) noexcept : h_(h) {}                             \
  /** The C handle (still owned by this object). */                        \
  CType *get() const noexcept { return h_.get(); }                         \
  /** Gives the C handle up: the caller destroys it. */                    \
  CType *release() noexcept { return h_.release(); }                       \
  explicit operator bool() const noexcept { return static_cast<bool>(h_); } \
                                                                           \
 private:                                                                  \
  detail::Owned<CType, destroy> h_;                                        \
                                                                           \
 public:

/// An exported object with its fd. Importing from it never uses it up.
class Export {
  LAVA_FLOW_HPP_HANDLE(Export, LavaFlowExport, lava_flow_export_destroy)
  LavaFlowObjectKind kind() const {
    LavaFlowObjectKind k{};
    check(lava_flow_export_kind(get(), &k));
    return k;
  }
  LavaFlowBufferDesc buffer_desc() const {
    auto d = make<LavaFlowBufferDesc>();
    check(lava_flow_export_buffer_desc(get(), &d));
    return d;
  }
  LavaFlowTextureDesc texture_desc() const {
    auto d = make<LavaFlowTextureDesc>();
    check(lava_flow_export_texture_desc(get(), &d));
    return d;
  }
  /// A fresh fd of the export, owned by the returned Fd.
  Fd dup_fd() const {
    int fd = -1;
    check(lava_flow_export_dup_fd(get(), &fd));
    return Fd(fd);
  }
  /// A buffer export from a description and an fd: consumes the fd on success; on failure it
  /// stays in `fd` and Error is thrown.
  static Export from_fd(const LavaFlowBufferDesc &desc, Fd &&fd) {
    LavaFlowExport *e = nullptr;
    check(lava_flow_export_from_fd(&desc, fd.get(), &e));
    (void)fd.release();  // consumed: the export owns it now
    return Export(e);
  }
};

/// A Vulkan device.
class Context {
  LAVA_FLOW_HPP_HANDLE(Context, LavaFlowContext, lava_flow_context_destroy)
  static Context open(std::uint32_t device_index = 0) {
    LavaFlowContext *c = nullptr;
    check(lava_flow_context_create(device_index, &c));
    return Context(c);
  }
  LavaFlowDeviceIdentity identity() const {
    LavaFlowDeviceIdentity id{};
    check(lava_flow_context_identity(get(), &id));
    return id;
  }
};

/// A Vulkan buffer in exportable memory.
class Buffer {
  LAVA_FLOW_HPP_HANDLE(Buffer, LavaFlowBuffer, lava_flow_buffer_destroy)
  static Buffer import(const Context &ctx, const Export &e) {
    LavaFlowBuffer *b = nullptr;
    check(lava_flow_buffer_import(ctx.get(), e.get(), &b));
    return Buffer(b);
  }
  std::uint64_t size() const {
    std::uint64_t s = 0;
    check(lava_flow_buffer_size(get(), &s));
    return s;
  }
  void write(std::uint64_t offset, Bytes data) { check(lava_flow_buffer_write(get(), offset, data.data(), data.size())); }
  void read(std::uint64_t offset, MutableBytes out) const {
    check(lava_flow_buffer_read(get(), offset, out.data(), out.size()));
  }
  std::vector<std::uint8_t> read(std::uint64_t offset, std::size_t len) const {
    std::vector<std::uint8_t> v(len);
    read(offset, MutableBytes(v));
    return v;
  }
  Export exported() const {
    LavaFlowExport *e = nullptr;
    check(lava_flow_buffer_export(get(), &e));
    return Export(e);
  }
};

/// A Vulkan image in exportable memory.
class Image {
  LAVA_FLOW_HPP_HANDLE(Image, LavaFlowImage, lava_flow_image_destroy)
  static Image import(const Context &ctx, const Export &e) {
    LavaFlowImage *i = nullptr;
    check(lava_flow_image_import(ctx.get(), e.get(), &i));
    return Image(i);
  }
  std::uint64_t packed_size() const {
    std::uint64_t s = 0;
    check(lava_flow_image_packed_size(get(), &s));
    return s;
  }
  void upload(Bytes texels) { check(lava_flow_image_upload(get(), texels.data(), texels.size())); }
  std::vector<std::uint8_t> download() const {
    std::vector<std::uint8_t> v(static_cast<std::size_t>(packed_size()));
    check(lava_flow_image_download(get(), v.data(), v.size()));
    return v;
  }
  Export exported() const {
    LavaFlowExport *e = nullptr;
    check(lava_flow_image_export(get(), &e));
    return Export(e);
  }
};

/// Allocates exportable buffers and images.
class Allocator {
  LAVA_FLOW_HPP_HANDLE(Allocator, LavaFlowAllocator, lava_flow_allocator_destroy)
  static Allocator create() {
    LavaFlowAllocator *a = nullptr;
    check(lava_flow_allocator_create(&a));
    return Allocator(a);
  }
  Context context(std::uint32_t device_index = 0) const {
    LavaFlowContext *c = nullptr;
    check(lava_flow_allocator_context(get(), device_index, &c));
    return Context(c);
  }
  Buffer buffer(const LavaFlowBufferOptions &options) const {
    LavaFlowBuffer *b = nullptr;
    check(lava_flow_buffer_create(get(), &options, &b));
    return Buffer(b);
  }
  /// A buffer of `size` bytes with everything else at its default.
  Buffer buffer(std::uint64_t size) const {
    auto o = make<LavaFlowBufferOptions>();
    o.size = size;
    return buffer(o);
  }
  Image image(const LavaFlowImageOptions &options) const {
    LavaFlowImage *i = nullptr;
    check(lava_flow_image_create(get(), &options, &i));
    return Image(i);
  }
};

/// Host memory in a memfd other processes and devices can map.
class HostMemory {
  LAVA_FLOW_HPP_HANDLE(HostMemory, LavaFlowHostMemory, lava_flow_host_memory_destroy)
  static HostMemory create(std::uint64_t size, std::uint64_t alignment = 0) {
    LavaFlowHostMemory *m = nullptr;
    check(lava_flow_host_memory_create(size, alignment, &m));
    return HostMemory(m);
  }
  /// Maps a shared memfd: consumes `fd` on success, leaves it in `fd` on failure.
  static HostMemory from_fd(Fd &&fd, std::uint64_t size) {
    LavaFlowHostMemory *m = nullptr;
    check(lava_flow_host_memory_from_fd(fd.get(), size, &m));
    (void)fd.release();
    return HostMemory(m);
  }
  /// The mapping. Other processes may write it at any time: synchronize before reading.
  void *data() const {
    void *p = nullptr;
    std::uint64_t n = 0;
    check(lava_flow_host_memory_data(get(), &p, &n));
    return p;
  }
  std::uint64_t size() const {
    void *p = nullptr;
    std::uint64_t n = 0;
    check(lava_flow_host_memory_data(get(), &p, &n));
    return n;
  }
  void write(std::uint64_t offset, Bytes data) {
    check(lava_flow_host_memory_write(get(), offset, data.data(), data.size()));
  }
  void read(std::uint64_t offset, MutableBytes out) const {
    check(lava_flow_host_memory_read(get(), offset, out.data(), out.size()));
  }
  Fd dup_fd() const {
    int fd = -1;
    check(lava_flow_host_memory_dup_fd(get(), &fd));
    return Fd(fd);
  }
  Export exported() const {
    LavaFlowExport *e = nullptr;
    check(lava_flow_host_memory_export(get(), &e));
    return Export(e);
  }
};

/// A timeline or binary semaphore.
class Semaphore {
  LAVA_FLOW_HPP_HANDLE(Semaphore, LavaFlowSemaphore, lava_flow_semaphore_destroy)
  /// A timeline semaphore at `initial_value` that stays on this device.
  static Semaphore timeline(const Context &ctx, std::uint64_t initial_value = 0) {
    auto o = make<LavaFlowSemaphoreOptions>();
    o.initial_value = initial_value;
    return create(ctx, o);
  }
  static Semaphore create(const Context &ctx, const LavaFlowSemaphoreOptions &options) {
    LavaFlowSemaphore *s = nullptr;
    check(lava_flow_semaphore_create(ctx.get(), &options, &s));
    return Semaphore(s);
  }
  static Semaphore import(const Context &ctx, const Export &e) {
    LavaFlowSemaphore *s = nullptr;
    check(lava_flow_semaphore_import(ctx.get(), e.get(), &s));
    return Semaphore(s);
  }
  std::uint64_t value() const {
    std::uint64_t v = 0;
    check(lava_flow_semaphore_value(get(), &v));
    return v;
  }
  void signal(std::uint64_t value) { check(lava_flow_semaphore_signal(get(), value)); }
  /// Waits until the value is reached; Error with LAVA_FLOW_ERROR_TIMEOUT after `timeout`.
  void wait(std::uint64_t value, std::chrono::nanoseconds timeout) const {
    check(lava_flow_semaphore_wait(get(), value, static_cast<std::uint64_t>(timeout.count())));
  }
  Export exported() const {
    LavaFlowExport *e = nullptr;
    check(lava_flow_semaphore_export(get(), &e));
    return Export(e);
  }
};

/// Shares exports with other processes over a Unix socket.
class Server {
  LAVA_FLOW_HPP_HANDLE(Server, LavaFlowServer, lava_flow_server_destroy)
  static Server bind(const std::string &path, const LavaFlowServerOptions *options = nullptr) {
    LavaFlowServer *s = nullptr;
    check(lava_flow_server_create(path.c_str(), options, &s));
    return Server(s);
  }
  void publish(const std::string &name, const Export &e) { check(lava_flow_server_publish(get(), name.c_str(), e.get())); }
  void remove(const std::string &name) { check(lava_flow_server_remove(get(), name.c_str())); }
  LavaFlowServerStats stats() const {
    auto s = make<LavaFlowServerStats>();
    check(lava_flow_server_stats(get(), &s));
    return s;
  }
};

/// A connection to a server.
class Client {
  LAVA_FLOW_HPP_HANDLE(Client, LavaFlowClient, lava_flow_client_destroy)
  static Client connect(const std::string &path, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    LavaFlowClient *c = nullptr;
    check(lava_flow_client_connect(path.c_str(), static_cast<std::uint32_t>(timeout.count()), &c));
    return Client(c);
  }
  Export get_object(const std::string &name) const {
    LavaFlowExport *e = nullptr;
    check(lava_flow_client_get(get(), name.c_str(), &e));
    return Export(e);
  }
  Export wait_for(const std::string &name, std::chrono::milliseconds timeout) const {
    LavaFlowExport *e = nullptr;
    check(lava_flow_client_wait_for(get(), name.c_str(), static_cast<std::uint32_t>(timeout.count()), &e));
    return Export(e);
  }
  void publish(const std::string &name, const Export &e) { check(lava_flow_client_publish(get(), name.c_str(), e.get())); }
};

/// A GL buffer object over imported memory.
class GlBuffer {
  LAVA_FLOW_HPP_HANDLE(GlBuffer, LavaFlowGlBuffer, lava_flow_gl_buffer_destroy)
  std::uint32_t name() const {
    std::uint32_t n = 0;
    check(lava_flow_gl_buffer_name(get(), &n));
    return n;
  }
  std::uint64_t size() const {
    std::uint64_t s = 0;
    check(lava_flow_gl_buffer_size(get(), &s));
    return s;
  }
  void read(std::uint64_t offset, MutableBytes out) const {
    check(lava_flow_gl_buffer_read(get(), offset, out.data(), out.size()));
  }
  void write(std::uint64_t offset, Bytes data) {
    check(lava_flow_gl_buffer_write(get(), offset, data.data(), data.size()));
  }
};

/// A GL texture over imported memory.
class GlTexture {
  LAVA_FLOW_HPP_HANDLE(GlTexture, LavaFlowGlTexture, lava_flow_gl_texture_destroy)
  std::uint64_t packed_size() const {
    std::uint64_t s = 0;
    check(lava_flow_gl_texture_packed_size(get(), &s));
    return s;
  }
  std::vector<std::uint8_t> read() const {
    std::vector<std::uint8_t> v(static_cast<std::size_t>(packed_size()));
    check(lava_flow_gl_texture_read(get(), v.data(), v.size()));
    return v;
  }
  void write(Bytes texels) { check(lava_flow_gl_texture_write(get(), texels.data(), texels.size())); }
};

/// A headless GL context of lava-flow's own.
class GlContext {
  LAVA_FLOW_HPP_HANDLE(GlContext, LavaFlowGlContext, lava_flow_gl_context_destroy)
  /// On the device `identity` names, or EGL's first device for nullptr.
  static GlContext create(const LavaFlowDeviceIdentity *identity = nullptr) {
    LavaFlowGlContext *g = nullptr;
    check(lava_flow_gl_context_create(identity, &g));
    return GlContext(g);
  }
  GlBuffer import_buffer(const Export &e) const {
    LavaFlowGlBuffer *b = nullptr;
    check(lava_flow_gl_import_buffer(get(), e.get(), &b));
    return GlBuffer(b);
  }
  GlTexture import_texture(const Export &e) const {
    LavaFlowGlTexture *t = nullptr;
    check(lava_flow_gl_import_texture(get(), e.get(), &t));
    return GlTexture(t);
  }
};

/// Imported memory as CUDA device memory.
class CudaBuffer {
  LAVA_FLOW_HPP_HANDLE(CudaBuffer, LavaFlowCudaBuffer, lava_flow_cuda_buffer_destroy)
  /// The CUdeviceptr.
  std::uint64_t device_pointer() const {
    std::uint64_t p = 0, s = 0;
    check(lava_flow_cuda_buffer_pointer(get(), &p, &s));
    return p;
  }
  void read(MutableBytes out) const { check(lava_flow_cuda_buffer_read(get(), out.data(), out.size())); }
  void write(Bytes data) { check(lava_flow_cuda_buffer_write(get(), data.data(), data.size())); }
};

/// A CUDA device.
class CudaDevice {
  LAVA_FLOW_HPP_HANDLE(CudaDevice, LavaFlowCudaDevice, lava_flow_cuda_device_destroy)
  static CudaDevice open(std::uint32_t ordinal) {
    LavaFlowCudaDevice *d = nullptr;
    check(lava_flow_cuda_device_create(ordinal, &d));
    return CudaDevice(d);
  }
  static CudaDevice for_identity(const LavaFlowDeviceIdentity &identity) {
    LavaFlowCudaDevice *d = nullptr;
    check(lava_flow_cuda_device_for_identity(&identity, &d));
    return CudaDevice(d);
  }
  CudaBuffer import_buffer(const Export &e) const {
    LavaFlowCudaBuffer *b = nullptr;
    check(lava_flow_cuda_import_buffer(get(), e.get(), &b));
    return CudaBuffer(b);
  }
};

/// Imported memory as an OpenCL buffer.
class OpenClBuffer {
  LAVA_FLOW_HPP_HANDLE(OpenClBuffer, LavaFlowOpenClBuffer, lava_flow_opencl_buffer_destroy)
  /// The cl_mem (owned by this object).
  void *mem() const {
    void *m = nullptr;
    std::uint64_t s = 0;
    check(lava_flow_opencl_buffer_mem(get(), &m, &s));
    return m;
  }
  void read(std::uint64_t offset, MutableBytes out) const {
    check(lava_flow_opencl_buffer_read(get(), offset, out.data(), out.size()));
  }
  void write(std::uint64_t offset, Bytes data) {
    check(lava_flow_opencl_buffer_write(get(), offset, data.data(), data.size()));
  }
};

/// An OpenCL context on one device.
class OpenClContext {
  LAVA_FLOW_HPP_HANDLE(OpenClContext, LavaFlowOpenClContext, lava_flow_opencl_context_destroy)
  static OpenClContext for_identity(const LavaFlowDeviceIdentity &identity) {
    LavaFlowOpenClContext *c = nullptr;
    check(lava_flow_opencl_context_create(&identity, &c));
    return OpenClContext(c);
  }
  OpenClBuffer import_buffer(const Export &e) const {
    LavaFlowOpenClBuffer *b = nullptr;
    check(lava_flow_opencl_import_buffer(get(), e.get(), &b));
    return OpenClBuffer(b);
  }
};

/// Channel options (LavaFlowChannelOptions) with every field at its default.
inline LavaFlowChannelOptions channel_options() noexcept { return make<LavaFlowChannelOptions>(); }

/// Metadata for `len` bytes of plain data (0: the whole frame), everything else zero.
inline LavaFlowFrameMetadata frame_metadata(std::uint64_t len = 0) noexcept {
  auto m = make<LavaFlowFrameMetadata>();
  m.len = len;
  return m;
}

/// A frame the producer is writing. Send it with send(); destroying it unsent discards it (its
/// slot returns to the pool). Destroy frames before their Producer: a producer with live frames
/// refuses to be destroyed.
class WriteFrame {
  LAVA_FLOW_HPP_HANDLE(WriteFrame, LavaFlowWriteFrame, lava_flow_write_frame_discard)
  /// Bytes the frame holds.
  std::uint64_t capacity() const {
    std::uint64_t c = 0;
    check(lava_flow_write_frame_capacity(get(), &c));
    return c;
  }
  /// Copies `data` into the frame at `offset`.
  void write(std::uint64_t offset, Bytes data) {
    check(lava_flow_write_frame_write(get(), offset, data.data(), data.size()));
  }
  /// Sends the frame with `metadata`. The frame is used up whatever the outcome (on Error it
  /// was not sent and its slot is free again), as lava_flow_write_frame_send does.
  void send(const LavaFlowFrameMetadata &metadata) { check(lava_flow_write_frame_send(release(), &metadata)); }
  /// Gives the frame back unsent.
  void discard() { check(lava_flow_write_frame_discard(release())); }
};

/// A frame a consumer holds: released on destruction (or by release_frame()). Only copies come
/// out of it: the bytes are shared memory another process wrote. Destroy frames before their
/// Consumer: a consumer with live frames refuses to be destroyed.
class ReadFrame {
  LAVA_FLOW_HPP_HANDLE(ReadFrame, LavaFlowReadFrame, lava_flow_read_frame_release)
  /// The sequence number the producer gave it (0 for its first frame).
  std::uint64_t sequence() const {
    std::uint64_t s = 0;
    check(lava_flow_read_frame_sequence(get(), &s));
    return s;
  }
  LavaFlowFrameMetadata metadata() const {
    auto m = make<LavaFlowFrameMetadata>();
    check(lava_flow_read_frame_metadata(get(), &m));
    return m;
  }
  /// Bytes of data (the metadata's len).
  std::uint64_t len() const { return metadata().len; }
  /// Copies out.size() bytes at `offset` out of the frame.
  void read(std::uint64_t offset, MutableBytes out) const {
    check(lava_flow_read_frame_read(get(), offset, out.data(), out.size()));
  }
  /// `len` bytes at `offset`, copied.
  std::vector<std::uint8_t> read(std::uint64_t offset, std::size_t len) const {
    std::vector<std::uint8_t> v(len);
    read(offset, MutableBytes(v));
    return v;
  }
  /// Releases the frame now (the producer may reuse its slot).
  void release_frame() { check(lava_flow_read_frame_release(release())); }
};

/// The producing end of a channel (docs/CHANNELS.md).
class Producer {
  LAVA_FLOW_HPP_HANDLE(Producer, LavaFlowProducer, lava_flow_channel_producer_destroy)
  /// Allocates the pool and listens at `path` (nullptr options: every default).
  static Producer create(const std::string &path, const LavaFlowChannelOptions *options = nullptr) {
    LavaFlowProducer *p = nullptr;
    check(lava_flow_channel_producer_create(path.c_str(), options, &p));
    return Producer(p);
  }
  /// Waits until `count` consumers are connected (Error with LAVA_FLOW_ERROR_TIMEOUT after `timeout`).
  void wait_for_consumers(std::uint32_t count, std::chrono::milliseconds timeout) {
    check(lava_flow_channel_producer_wait_for_consumers(get(), count, static_cast<std::uint32_t>(timeout.count())));
  }
  /// Consumers connected now.
  std::uint32_t consumers() {
    std::uint32_t n = 0;
    check(lava_flow_channel_producer_consumers(get(), &n));
    return n;
  }
  /// A free frame, waiting up to `timeout` while every slot is in flight.
  WriteFrame acquire(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    LavaFlowWriteFrame *f = nullptr;
    check(lava_flow_channel_producer_acquire(get(), static_cast<std::uint32_t>(timeout.count()), &f));
    return WriteFrame(f);
  }
  /// A free frame now, or nullopt while every slot is in flight (LAVA_FLOW_ERROR_FULL).
  std::optional<WriteFrame> try_acquire() {
    LavaFlowWriteFrame *f = nullptr;
    LavaFlowStatus s = lava_flow_channel_producer_try_acquire(get(), &f);
    if (s == LAVA_FLOW_ERROR_FULL) return std::nullopt;
    check(s);
    return WriteFrame(f);
  }
  /// Ends the channel after waiting up to `timeout` for consumers to release their frames.
  void finish(std::chrono::milliseconds timeout) {
    check(lava_flow_channel_producer_finish(get(), static_cast<std::uint32_t>(timeout.count())));
  }
};

/// The consuming end of a channel.
class Consumer {
  LAVA_FLOW_HPP_HANDLE(Consumer, LavaFlowConsumer, lava_flow_channel_consumer_destroy)
  /// Connects to the producer at `path`, retrying until one listens or `timeout` passes.
  static Consumer connect(const std::string &path, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto o = channel_options();
    o.timeout_ms = static_cast<std::uint32_t>(timeout.count());
    LavaFlowConsumer *c = nullptr;
    check(lava_flow_channel_consumer_create(path.c_str(), &o, &c));
    return Consumer(c);
  }
  /// Frames in the producer's pool.
  std::uint32_t slots() const {
    std::uint32_t n = 0;
    check(lava_flow_channel_consumer_shape(get(), &n, nullptr));
    return n;
  }
  /// Bytes per frame.
  std::uint64_t frame_size() const {
    std::uint64_t n = 0;
    check(lava_flow_channel_consumer_shape(get(), nullptr, &n));
    return n;
  }
  /// The next frame, waiting up to `timeout`; nullopt once the producer ended the channel
  /// (LAVA_FLOW_ERROR_CLOSED: every frame was delivered). Error with LAVA_FLOW_ERROR_TIMEOUT when
  /// none came in time, LAVA_FLOW_ERROR_DISCONNECTED when the producer went away without ending it.
  std::optional<ReadFrame> recv(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    LavaFlowReadFrame *f = nullptr;
    LavaFlowStatus s = lava_flow_channel_consumer_recv(get(), static_cast<std::uint32_t>(timeout.count()), &f);
    if (s == LAVA_FLOW_ERROR_CLOSED) return std::nullopt;
    check(s);
    return ReadFrame(f);
  }
};

#undef LAVA_FLOW_HPP_HANDLE

}  // namespace lava_flow

#endif  // LAVA_FLOW_HPP
