/*
 * The C API's test suite: every call a C program makes, and every way of calling it wrong that C
 * allows (NULL pointers, destroyed and foreign handles, handles of another type, wrong sizes,
 * struct_size too small or too large, foreign and closed fds). Each wrong call must return its
 * status code, set a message, crash nothing, and leave the process's fds as they were.
 *
 * Built and run by `cargo xtask c-check` (the suite's "C API" step) against the installed
 * library, shared and static. Ends with `RESULT: passed=N skipped=M`; exits 1 on any failure.
 * CUDA and OpenCL checks skip where their libraries or devices are missing, and fail instead when
 * LAVA_FLOW_REQUIRE names them (as Rust tests do).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lava_flow.h>

static int passed, failed, skipped;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (cond) {                                                            \
      passed++;                                                            \
    } else {                                                               \
      failed++;                                                            \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, "\n");                                               \
    }                                                                      \
  } while (0)

/* A call that must return `want`; an error must come with a message. */
#define EXPECT(call, want)                                                                         \
  do {                                                                                             \
    LavaFlowStatus s_ = (call);                                                                    \
    CHECK(s_ == (want), "%s returned %s, expected %s (%s)", #call, lava_flow_status_name(s_),     \
          lava_flow_status_name(want), lava_flow_last_error());                                    \
    if (s_ != LAVA_FLOW_OK && s_ == (want))                                                        \
      CHECK(lava_flow_last_error()[0] != '\0', "no message after %s", #call);                       \
  } while (0)

#define OK(call) EXPECT(call, LAVA_FLOW_OK)

/* A call the rest of a test depends on: stop the test when it fails. */
#define MUST(call)                                                                                 \
  do {                                                                                             \
    LavaFlowStatus s_ = (call);                                                                    \
    CHECK(s_ == LAVA_FLOW_OK, "%s returned %s: %s", #call, lava_flow_status_name(s_),               \
          lava_flow_last_error());                                                                 \
    if (s_ != LAVA_FLOW_OK) return;                                                                \
  } while (0)

/* Whether LAVA_FLOW_REQUIRE names `api` (or `all`). */
static int required(const char *api) {
  const char *v = getenv("LAVA_FLOW_REQUIRE");
  if (!v) return 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", v);
  for (char *tok = strtok(buf, ", "); tok; tok = strtok(NULL, ", "))
    if (!strcasecmp(tok, api) || !strcasecmp(tok, "all")) return 1;
  return 0;
}

/* An API that cannot be opened: a skip, or a failure when required. */
static void skip_or_fail(const char *api, LavaFlowStatus s) {
  if (required(api)) {
    failed++;
    fprintf(stderr, "FAIL: %s is required (LAVA_FLOW_REQUIRE) but could not be opened: %s: %s\n", api,
            lava_flow_status_name(s), lava_flow_last_error());
  } else {
    skipped++;
    printf("SKIPPED (%s unavailable): %s\n", api, lava_flow_last_error());
  }
}

static int is_unavailable(LavaFlowStatus s) {
  return s == LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE || s == LAVA_FLOW_ERROR_DEVICE_NOT_FOUND ||
         s == LAVA_FLOW_ERROR_UNSUPPORTED;
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  if (!d) return -1;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

static int fd_is_open(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

static uint32_t pattern_word(uint32_t i) { return (i * 0x9E3779B1u) ^ 0xA5A5A5A5u; }

static void fill_pattern(uint8_t *bytes, size_t len) {
  for (size_t i = 0; i + 4 <= len; i += 4) {
    uint32_t w = pattern_word((uint32_t)(i / 4));
    memcpy(bytes + i, &w, 4);
  }
}

/* ---------------------------------------------------------------------------------------------- */

static void test_basics(void) {
  CHECK(lava_flow_abi_version() == LAVA_FLOW_ABI_VERSION, "abi %u", lava_flow_abi_version());
  CHECK(strlen(lava_flow_version()) > 0, "empty version");
  CHECK(!strcmp(lava_flow_status_name(LAVA_FLOW_ERROR_STRUCT_SIZE), "LAVA_FLOW_ERROR_STRUCT_SIZE"), "name");
  CHECK(!strcmp(lava_flow_status_name(12345), "LAVA_FLOW_UNKNOWN_STATUS"), "unknown name");
}

static void test_null_pointers(void) {
  LavaFlowAllocator *a = NULL;
  EXPECT(lava_flow_allocator_create(NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  CHECK(strstr(lava_flow_last_error(), "lava_flow_allocator_create") != NULL, "message names the call: %s",
        lava_flow_last_error());
  EXPECT(lava_flow_buffer_create(NULL, NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_buffer_create(a, NULL, (LavaFlowBuffer **)&a), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_buffer_size(NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_export_dup_fd(NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_client_connect(NULL, 10, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  LavaFlowClient *c = NULL;
  EXPECT(lava_flow_client_connect(NULL, 10, &c), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_server_publish(NULL, NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_host_memory_data(NULL, NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_gl_import_buffer(NULL, NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_opencl_context_create(NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  /* Destroying NULL does nothing, as free(NULL). */
  OK(lava_flow_buffer_destroy(NULL));
  OK(lava_flow_export_destroy(NULL));
  OK(lava_flow_server_destroy(NULL));
}

static void test_handles(void) {
  uint64_t live = lava_flow_live_handles();
  LavaFlowHostMemory *m = NULL;
  MUST(lava_flow_host_memory_create(4096, 0, &m));
  CHECK(lava_flow_live_handles() == live + 1, "live %llu", (unsigned long long)lava_flow_live_handles());
  uint8_t byte = 7;
  OK(lava_flow_host_memory_write(m, 0, &byte, 1));
  OK(lava_flow_host_memory_destroy(m));
  CHECK(lava_flow_live_handles() == live, "live after destroy");
  /* Destroyed: every use and a second destroy are refused. */
  EXPECT(lava_flow_host_memory_write(m, 0, &byte, 1), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_host_memory_destroy(m), LAVA_FLOW_ERROR_INVALID_HANDLE);
  CHECK(strstr(lava_flow_last_error(), "LavaFlowHostMemory") != NULL, "message names the type: %s",
        lava_flow_last_error());
  /* Foreign: numbers and pointers lava-flow never gave out (nothing is read through them). */
  int local = 0;
  EXPECT(lava_flow_buffer_destroy((LavaFlowBuffer *)(uintptr_t)0x1234), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_buffer_size((LavaFlowBuffer *)&local, (uint64_t *)&local), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_export_destroy((LavaFlowExport *)(uintptr_t)UINTPTR_MAX), LAVA_FLOW_ERROR_INVALID_HANDLE);
  /* Another type: a host memory handle passed as a buffer. */
  MUST(lava_flow_host_memory_create(4096, 0, &m));
  uint64_t size = 0;
  EXPECT(lava_flow_buffer_size((LavaFlowBuffer *)m, &size), LAVA_FLOW_ERROR_INVALID_HANDLE);
  CHECK(strstr(lava_flow_last_error(), "is a LavaFlowHostMemory") != NULL, "message: %s", lava_flow_last_error());
  EXPECT(lava_flow_buffer_destroy((LavaFlowBuffer *)m), LAVA_FLOW_ERROR_INVALID_HANDLE);
  OK(lava_flow_host_memory_destroy(m)); /* still alive after the wrong-type destroy */
  CHECK(lava_flow_live_handles() == live, "handles leaked: %llu", (unsigned long long)lava_flow_live_handles());
}

static void test_host_memory_and_fds(void) {
  LavaFlowHostMemory *m = NULL;
  MUST(lava_flow_host_memory_create(10000, 0, &m));
  void *data = NULL;
  uint64_t len = 0;
  OK(lava_flow_host_memory_data(m, &data, &len));
  CHECK(len >= 10000 && data != NULL, "len %llu", (unsigned long long)len);
  const char text[] = "lava-flow";
  OK(lava_flow_host_memory_write(m, 100, text, sizeof text));
  CHECK(data && !memcmp((char *)data + 100, text, sizeof text), "mapping shows the write");
  /* Wrong sizes. */
  EXPECT(lava_flow_host_memory_write(m, len - 2, text, sizeof text), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_host_memory_read(m, 0, NULL, 5), LAVA_FLOW_ERROR_NULL_POINTER);

  /* fd out: a fresh fd the caller owns; fd in: consumed on success. */
  int before = count_fds();
  int fd = -1;
  OK(lava_flow_host_memory_dup_fd(m, &fd));
  CHECK(fd >= 0 && count_fds() == before + 1, "dup_fd gives one new fd");
  LavaFlowHostMemory *m2 = NULL;
  OK(lava_flow_host_memory_from_fd(fd, len, &m2));
  CHECK(count_fds() == before + 1, "a successful import consumed the caller's fd (%d fds, %d before)", count_fds(),
        before);
  char back[sizeof text] = {0};
  OK(lava_flow_host_memory_read(m2, 100, back, sizeof back));
  CHECK(!memcmp(back, text, sizeof text), "the second mapping reads the first's bytes");
  OK(lava_flow_host_memory_destroy(m2));
  CHECK(count_fds() == before, "destroy closed the mapping's fd");

  /* A failed import leaves the fd to the caller: too large a size, then a pipe. */
  OK(lava_flow_host_memory_dup_fd(m, &fd));
  EXPECT(lava_flow_host_memory_from_fd(fd, len * 4, &m2), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  CHECK(fd_is_open(fd) && count_fds() == before + 1, "a failed import left the fd open");
  close(fd);
  int p[2];
  CHECK(pipe(p) == 0, "pipe");
  EXPECT(lava_flow_host_memory_from_fd(p[0], 4096, &m2), LAVA_FLOW_ERROR_INVALID_FD);
  CHECK(fd_is_open(p[0]) && count_fds() == before + 2, "a refused pipe stays open");
  close(p[0]);
  close(p[1]);
  /* Closed and negative fds: refused, nothing closed (no other thread runs yet: the closed number
   * cannot have been reused). */
  EXPECT(lava_flow_host_memory_from_fd(-1, 4096, &m2), LAVA_FLOW_ERROR_INVALID_FD);
  EXPECT(lava_flow_host_memory_from_fd(p[0], 4096, &m2), LAVA_FLOW_ERROR_INVALID_FD);
  CHECK(count_fds() == before, "fds unchanged after refusals: %d, %d before", count_fds(), before);

  /* Export of host memory, and its description. */
  LavaFlowExport *e = NULL;
  OK(lava_flow_host_memory_export(m, &e));
  LavaFlowObjectKind kind = 0;
  OK(lava_flow_export_kind(e, &kind));
  CHECK(kind == LAVA_FLOW_OBJECT_MEMORY, "kind %d", (int)kind);
  LavaFlowBufferDesc desc = {.struct_size = sizeof desc};
  OK(lava_flow_export_buffer_desc(e, &desc));
  CHECK(desc.handle_kind == LAVA_FLOW_MEMORY_HANDLE_HOST_MEMFD && desc.size == len && desc.struct_size == sizeof desc,
        "desc kind %u size %llu", desc.handle_kind, (unsigned long long)desc.size);
  LavaFlowTextureDesc tdesc = {.struct_size = sizeof tdesc};
  EXPECT(lava_flow_export_texture_desc(e, &tdesc), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  OK(lava_flow_export_destroy(e));
  OK(lava_flow_host_memory_destroy(m));
  CHECK(count_fds() == before - 1, "destroy closed the memory's own fd, and nothing else");
}

static void test_struct_size(LavaFlowAllocator *a) {
  LavaFlowBuffer *b = NULL;
  LavaFlowBufferOptions o = {.struct_size = sizeof o, .size = 4096};
  /* Too small: refused before anything is read past struct_size. */
  o.struct_size = 8;
  EXPECT(lava_flow_buffer_create(a, &o, &b), LAVA_FLOW_ERROR_STRUCT_SIZE);
  CHECK(strstr(lava_flow_last_error(), "LavaFlowBufferOptions") != NULL, "%s", lava_flow_last_error());
  o.struct_size = 0;
  EXPECT(lava_flow_buffer_create(a, &o, &b), LAVA_FLOW_ERROR_STRUCT_SIZE);
  /* Larger (a newer header's struct): accepted when the unknown bytes are zero. */
  struct {
    LavaFlowBufferOptions v1;
    uint64_t newer_field;
  } newer = {{.struct_size = sizeof newer, .size = 4096}, 0};
  OK(lava_flow_buffer_create(a, &newer.v1, &b));
  OK(lava_flow_buffer_destroy(b));
  newer.newer_field = 1;
  EXPECT(lava_flow_buffer_create(a, &newer.v1, &b), LAVA_FLOW_ERROR_STRUCT_SIZE);
  o.struct_size = LAVA_FLOW_STRUCT_SIZE_MAX + 1;
  EXPECT(lava_flow_buffer_create(a, &o, &b), LAVA_FLOW_ERROR_STRUCT_SIZE);
  /* Enum fields are checked. */
  o.struct_size = sizeof o;
  o.memory = 77;
  EXPECT(lava_flow_buffer_create(a, &o, &b), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  o.memory = 0;
  o.for_gl = 2;
  EXPECT(lava_flow_buffer_create(a, &o, &b), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  o.for_gl = 0;
  o.size = 0;
  EXPECT(lava_flow_buffer_create(a, &o, &b), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  /* Output structs: too small is refused; larger gets its unknown tail zeroed. */
  o.size = 4096;
  MUST(lava_flow_buffer_create(a, &o, &b));
  LavaFlowExport *e = NULL;
  MUST(lava_flow_buffer_export(b, &e));
  LavaFlowBufferDesc small = {.struct_size = 16};
  EXPECT(lava_flow_export_buffer_desc(e, &small), LAVA_FLOW_ERROR_STRUCT_SIZE);
  struct {
    LavaFlowBufferDesc v1;
    uint64_t tail[2];
  } big;
  memset(&big, 0xff, sizeof big);
  big.v1.struct_size = sizeof big;
  OK(lava_flow_export_buffer_desc(e, &big.v1));
  CHECK(big.v1.struct_size == sizeof big && big.tail[0] == 0 && big.tail[1] == 0 && big.v1.size == 4096,
        "struct_size kept, tail zeroed");
  OK(lava_flow_export_destroy(e));
  OK(lava_flow_buffer_destroy(b));
}

static void test_buffers(LavaFlowAllocator *a) {
  const size_t n = 64 * 1024;
  uint8_t *pattern = malloc(n), *back = malloc(n);
  fill_pattern(pattern, n);
  LavaFlowBuffer *b = NULL, *imported = NULL;
  LavaFlowBufferOptions o = {.struct_size = sizeof o, .size = n, .for_gl = 1};
  MUST(lava_flow_buffer_create(a, &o, &b));
  uint64_t size = 0;
  OK(lava_flow_buffer_size(b, &size));
  CHECK(size == n, "size %llu", (unsigned long long)size);
  OK(lava_flow_buffer_write(b, 0, pattern, n));
  EXPECT(lava_flow_buffer_write(b, n - 4, pattern, 8), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_buffer_read(b, 0, back, n + 1), LAVA_FLOW_ERROR_INVALID_ARGUMENT);

  LavaFlowExport *e = NULL;
  MUST(lava_flow_buffer_export(b, &e));
  LavaFlowBufferDesc desc = {.struct_size = sizeof desc};
  OK(lava_flow_export_buffer_desc(e, &desc));
  CHECK(desc.size == n && desc.allocation_size >= n && desc.handle_kind != 0, "desc");

  /* Import into a second context of the same device (lava-flow's allocator keeps its own). */
  LavaFlowContext *ctx = NULL;
  MUST(lava_flow_context_create(0, &ctx));
  OK(lava_flow_buffer_import(ctx, e, &imported));
  memset(back, 0, n);
  if (imported) OK(lava_flow_buffer_read(imported, 0, back, n));
  CHECK(!memcmp(back, pattern, n), "the import reads the exporter's bytes");
  /* The export is not used up: a second import works. */
  LavaFlowBuffer *again = NULL;
  OK(lava_flow_buffer_import(ctx, e, &again));
  OK(lava_flow_buffer_destroy(again));
  /* Wrong kind: a buffer export is no texture. */
  LavaFlowImage *img = NULL;
  EXPECT(lava_flow_image_import(ctx, e, &img), LAVA_FLOW_ERROR_INVALID_ARGUMENT);

  /* Description + fd through the caller's own transport: from_fd consumes the fd on success. */
  int before = count_fds();
  int fd = -1;
  OK(lava_flow_export_dup_fd(e, &fd));
  LavaFlowExport *rebuilt = NULL;
  OK(lava_flow_export_from_fd(&desc, fd, &rebuilt));
  CHECK(count_fds() == before + 1, "from_fd consumed the caller's fd");
  LavaFlowBuffer *via_fd = NULL;
  OK(lava_flow_buffer_import(ctx, rebuilt, &via_fd));
  memset(back, 0, n);
  if (via_fd) OK(lava_flow_buffer_read(via_fd, 0, back, n));
  CHECK(!memcmp(back, pattern, n), "the rebuilt export reads the same bytes");
  OK(lava_flow_buffer_destroy(via_fd));
  OK(lava_flow_export_destroy(rebuilt));

  /* Foreign fds for from_fd: a pipe, /dev/null, a closed number; each left to the caller. */
  before = count_fds();
  int p[2];
  CHECK(pipe(p) == 0, "pipe");
  EXPECT(lava_flow_export_from_fd(&desc, p[0], &rebuilt), LAVA_FLOW_ERROR_INVALID_FD);
  CHECK(fd_is_open(p[0]), "the pipe is still the caller's");
  FILE *file = tmpfile();
  int plain = file ? fileno(file) : -1;
  EXPECT(lava_flow_export_from_fd(&desc, plain, &rebuilt), LAVA_FLOW_ERROR_INVALID_FD);
  CHECK(fd_is_open(plain), "the plain file is still the caller's");
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  EXPECT(lava_flow_export_from_fd(&desc, sv[0], &rebuilt), LAVA_FLOW_ERROR_INVALID_FD);
  CHECK(fd_is_open(sv[0]), "the socket is still the caller's");
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);
  if (file) fclose(file);
  /* A number that is not open (far above any fd limit: a just-closed number could already be
   * reused by a driver thread). */
  EXPECT(lava_flow_export_from_fd(&desc, 0x7fff0000, &rebuilt), LAVA_FLOW_ERROR_INVALID_FD);
  CHECK(count_fds() == before, "fds unchanged after foreign fds: %d, %d before", count_fds(), before);
  /* A description that does not hold together. */
  LavaFlowBufferDesc bad = desc;
  bad.offset = desc.allocation_size;
  OK(lava_flow_export_dup_fd(e, &fd));
  EXPECT(lava_flow_export_from_fd(&bad, fd, &rebuilt), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  bad = desc;
  bad.handle_kind = 99;
  EXPECT(lava_flow_export_from_fd(&bad, fd, &rebuilt), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  CHECK(fd_is_open(fd), "refused descriptions leave the fd");
  close(fd);
  CHECK(count_fds() == before, "fds unchanged");

  /* Destroy order does not matter: the imports keep the context alive. */
  OK(lava_flow_context_destroy(ctx));
  OK(lava_flow_export_destroy(e));
  OK(lava_flow_buffer_destroy(b));
  memset(back, 0, n);
  if (imported) OK(lava_flow_buffer_read(imported, 0, back, n));
  CHECK(!memcmp(back, pattern, n), "an import outlives its context handle and exporter");
  OK(lava_flow_buffer_destroy(imported));
  free(pattern);
  free(back);
}

static void test_images(LavaFlowAllocator *a) {
  LavaFlowImageOptions o = {.struct_size = sizeof o, .format = LAVA_FLOW_FORMAT_RGBA8_UNORM, .width = 64, .height = 32};
  LavaFlowImage *img = NULL;
  o.format = 0;
  EXPECT(lava_flow_image_create(a, &o, &img), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  o.format = LAVA_FLOW_FORMAT_RGBA8_UNORM;
  MUST(lava_flow_image_create(a, &o, &img));
  uint64_t packed = 0;
  OK(lava_flow_image_packed_size(img, &packed));
  CHECK(packed == 64 * 32 * 4, "packed %llu", (unsigned long long)packed);
  uint8_t *texels = malloc(packed), *back = calloc(1, packed);
  fill_pattern(texels, packed);
  EXPECT(lava_flow_image_upload(img, texels, packed - 1), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  OK(lava_flow_image_upload(img, texels, packed));
  LavaFlowExport *e = NULL;
  OK(lava_flow_image_export(img, &e));
  LavaFlowTextureDesc d = {.struct_size = sizeof d};
  OK(lava_flow_export_texture_desc(e, &d));
  CHECK(d.width == 64 && d.height == 32 && d.format == LAVA_FLOW_FORMAT_RGBA8_UNORM && d.tiling != 0, "texture desc");
  LavaFlowContext *ctx = NULL;
  OK(lava_flow_allocator_context(a, 0, &ctx));
  LavaFlowImage *imported = NULL;
  OK(lava_flow_image_import(ctx, e, &imported));
  EXPECT(lava_flow_image_download(imported, back, packed + 4), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  OK(lava_flow_image_download(imported, back, packed));
  CHECK(!memcmp(back, texels, packed), "imported image holds the texels");
  OK(lava_flow_image_destroy(imported));
  OK(lava_flow_context_destroy(ctx));
  OK(lava_flow_export_destroy(e));
  OK(lava_flow_image_destroy(img));
  free(texels);
  free(back);
}

static void test_semaphores(LavaFlowAllocator *a) {
  LavaFlowContext *ctx = NULL;
  MUST(lava_flow_allocator_context(a, 0, &ctx));
  LavaFlowSemaphore *s = NULL;
  LavaFlowSemaphoreOptions o = {.struct_size = sizeof o, .kind = 5};
  EXPECT(lava_flow_semaphore_create(ctx, &o, &s), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  o.kind = LAVA_FLOW_SEMAPHORE_TIMELINE;
  o.initial_value = 3;
  MUST(lava_flow_semaphore_create(ctx, &o, &s));
  uint64_t v = 0;
  OK(lava_flow_semaphore_value(s, &v));
  CHECK(v == 3, "initial value %llu", (unsigned long long)v);
  OK(lava_flow_semaphore_signal(s, 5));
  OK(lava_flow_semaphore_wait(s, 5, 1000000000ull));
  EXPECT(lava_flow_semaphore_wait(s, 6, 1000000ull), LAVA_FLOW_ERROR_TIMEOUT);
  LavaFlowExport *e = NULL;
  /* Not exportable (made without an export kind): an error, not a crash. */
  LavaFlowStatus st = lava_flow_semaphore_export(s, &e);
  CHECK(st != LAVA_FLOW_OK, "a semaphore made without an export kind exported");
  OK(lava_flow_semaphore_destroy(s));
  /* An exportable one where the driver can (lavapipe cannot export timeline semaphores). */
  o.export_kind = LAVA_FLOW_SEMAPHORE_EXPORT_OPAQUE_FD;
  o.initial_value = 0;
  st = lava_flow_semaphore_create(ctx, &o, &s);
  if (st == LAVA_FLOW_ERROR_UNSUPPORTED) {
    if (required("semaphores")) {
      failed++;
      fprintf(stderr, "FAIL: exportable timeline semaphores are required: %s\n", lava_flow_last_error());
    } else {
      skipped++;
      printf("SKIPPED (semaphores capability): %s\n", lava_flow_last_error());
    }
  } else {
    CHECK(st == LAVA_FLOW_OK, "%s: %s", lava_flow_status_name(st), lava_flow_last_error());
    if (st == LAVA_FLOW_OK) {
      OK(lava_flow_semaphore_export(s, &e));
      LavaFlowSemaphore *imported = NULL;
      OK(lava_flow_semaphore_import(ctx, e, &imported));
      OK(lava_flow_semaphore_signal(s, 2));
      OK(lava_flow_semaphore_wait(imported, 2, 1000000000ull));
      OK(lava_flow_semaphore_destroy(imported));
      OK(lava_flow_export_destroy(e));
      OK(lava_flow_semaphore_destroy(s));
    }
  }
  OK(lava_flow_context_destroy(ctx));
}

static void test_ipc(LavaFlowAllocator *a) {
  char path[128];
  snprintf(path, sizeof path, "/tmp/lava-flow-c-test-%d.sock", (int)getpid());
  LavaFlowServer *server = NULL;
  LavaFlowServerOptions so = {.struct_size = sizeof so, .accept_publish = 1};
  MUST(lava_flow_server_create(path, &so, &server));
  LavaFlowBufferOptions bo = {.struct_size = sizeof bo, .size = 4096, .strategy = LAVA_FLOW_ALLOCATION_POOLED};
  LavaFlowBuffer *b = NULL;
  /* A pooled buffer's fd maps its neighbours: publishing it is refused. */
  MUST(lava_flow_buffer_create(a, &bo, &b));
  LavaFlowExport *pooled = NULL;
  MUST(lava_flow_buffer_export(b, &pooled));
  EXPECT(lava_flow_server_publish(server, "pooled", pooled), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  OK(lava_flow_export_destroy(pooled));
  OK(lava_flow_buffer_destroy(b));
  bo.strategy = LAVA_FLOW_ALLOCATION_DEDICATED;
  MUST(lava_flow_buffer_create(a, &bo, &b));
  uint8_t pattern[4096], back[4096];
  fill_pattern(pattern, sizeof pattern);
  OK(lava_flow_buffer_write(b, 0, pattern, sizeof pattern));
  LavaFlowExport *e = NULL;
  MUST(lava_flow_buffer_export(b, &e));
  OK(lava_flow_server_publish(server, "pattern", e));
  EXPECT(lava_flow_server_remove(server, "nothing"), LAVA_FLOW_ERROR_INVALID_ARGUMENT);

  LavaFlowClient *client = NULL;
  MUST(lava_flow_client_connect(path, 2000, &client));
  LavaFlowExport *got = NULL;
  OK(lava_flow_client_get(client, "pattern", &got));
  LavaFlowExport *missing = NULL;
  EXPECT(lava_flow_client_get(client, "not-published", &missing), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_client_wait_for(client, "not-published", 50, &missing), LAVA_FLOW_ERROR_TIMEOUT);
  /* A name that is not UTF-8. */
  EXPECT(lava_flow_client_get(client, "\xff\xfe", &missing), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  LavaFlowContext *ctx = NULL;
  OK(lava_flow_allocator_context(a, 0, &ctx));
  LavaFlowBuffer *imported = NULL;
  if (got) OK(lava_flow_buffer_import(ctx, got, &imported));
  memset(back, 0, sizeof back);
  if (imported) OK(lava_flow_buffer_read(imported, 0, back, sizeof back));
  CHECK(!memcmp(back, pattern, sizeof back), "the client's import reads the server's buffer");
  /* The client publishes back under another name. */
  OK(lava_flow_client_publish(client, "echo", e));
  LavaFlowExport *echo = NULL;
  OK(lava_flow_client_get(client, "echo", &echo));
  LavaFlowServerStats st = {.struct_size = sizeof st};
  /* The server thread counts a reply after sending it: the client can hold the object first. */
  for (int i = 0; i < 200; i++) {
    OK(lava_flow_server_stats(server, &st));
    if (st.connections_accepted >= 1 && st.objects_sent >= 2) break;
    usleep(10000);
  }
  CHECK(st.connections_accepted >= 1 && st.objects_sent >= 2, "stats: %llu accepted, %llu sent",
        (unsigned long long)st.connections_accepted, (unsigned long long)st.objects_sent);
  st.struct_size = 4;
  EXPECT(lava_flow_server_stats(server, &st), LAVA_FLOW_ERROR_STRUCT_SIZE);
  /* A second server on a live server's socket is refused. */
  LavaFlowServer *second = NULL;
  CHECK(lava_flow_server_create(path, NULL, &second) != LAVA_FLOW_OK, "a second server on a live socket");
  OK(lava_flow_export_destroy(echo));
  OK(lava_flow_buffer_destroy(imported));
  OK(lava_flow_context_destroy(ctx));
  OK(lava_flow_export_destroy(got));
  OK(lava_flow_client_destroy(client));
  OK(lava_flow_server_destroy(server));
  CHECK(access(path, F_OK) != 0, "the server removed its socket");
  EXPECT(lava_flow_client_connect(path, 100, &client), LAVA_FLOW_ERROR_IO);
  OK(lava_flow_export_destroy(e));
  OK(lava_flow_buffer_destroy(b));
}

/* CUDA and OpenCL: a buffer exported by Vulkan, imported, read back. On a machine without them,
 * the opening call returns a status (library or device missing) and the rest skips. */
static void test_cuda_opencl(LavaFlowAllocator *a) {
  const size_t n = 4096;
  uint8_t pattern[4096], back[4096];
  fill_pattern(pattern, n);
  LavaFlowBufferOptions o = {.struct_size = sizeof o, .size = n};
  LavaFlowBuffer *b = NULL;
  MUST(lava_flow_buffer_create(a, &o, &b));
  OK(lava_flow_buffer_write(b, 0, pattern, n));
  LavaFlowExport *e = NULL;
  MUST(lava_flow_buffer_export(b, &e));
  LavaFlowBufferDesc d = {.struct_size = sizeof d};
  MUST(lava_flow_export_buffer_desc(e, &d));

  LavaFlowCudaDevice *cu = NULL;
  LavaFlowStatus s = lava_flow_cuda_device_for_identity(&d.device, &cu);
  if (is_unavailable(s)) {
    skip_or_fail("cuda", s);
  } else if (s == LAVA_FLOW_OK) {
    LavaFlowCudaBuffer *cb = NULL;
    OK(lava_flow_cuda_import_buffer(cu, e, &cb));
    uint64_t ptr = 0, size = 0;
    OK(lava_flow_cuda_buffer_pointer(cb, &ptr, &size));
    CHECK(ptr != 0 && size == n, "cuda pointer");
    memset(back, 0, n);
    EXPECT(lava_flow_cuda_buffer_read(cb, back, n - 1), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
    OK(lava_flow_cuda_buffer_read(cb, back, n));
    CHECK(!memcmp(back, pattern, n), "CUDA reads the Vulkan buffer");
    OK(lava_flow_cuda_buffer_destroy(cb));
    OK(lava_flow_cuda_device_destroy(cu));
  } else {
    CHECK(0, "lava_flow_cuda_device_for_identity: %s: %s", lava_flow_status_name(s), lava_flow_last_error());
  }

  LavaFlowOpenClContext *cl = NULL;
  s = lava_flow_opencl_context_create(&d.device, &cl);
  if (is_unavailable(s)) {
    skip_or_fail("opencl", s);
  } else if (s == LAVA_FLOW_OK) {
    LavaFlowOpenClBuffer *clb = NULL;
    OK(lava_flow_opencl_import_buffer(cl, e, &clb));
    void *mem = NULL;
    uint64_t size = 0;
    OK(lava_flow_opencl_buffer_mem(clb, &mem, &size));
    CHECK(mem != NULL && size == n, "cl_mem");
    memset(back, 0, n);
    OK(lava_flow_opencl_buffer_read(clb, 0, back, n));
    CHECK(!memcmp(back, pattern, n), "OpenCL reads the Vulkan buffer");
    OK(lava_flow_opencl_buffer_destroy(clb));
    OK(lava_flow_opencl_context_destroy(cl));
  } else {
    CHECK(0, "lava_flow_opencl_context_create: %s: %s", lava_flow_status_name(s), lava_flow_last_error());
  }
  OK(lava_flow_export_destroy(e));
  OK(lava_flow_buffer_destroy(b));
}

/* ---------------------------------------------------------------------------------------------- */
/* Channels: a producer and a consumer in this process (the consumer connects on a thread, as the
 * producer accepts it inside its own calls). Host-memory frames: no GPU needed. */

struct connect_args {
  const char *path;
  LavaFlowConsumer *consumer;
  LavaFlowStatus status;
};

static void *connect_consumer(void *p) {
  struct connect_args *args = p;
  LavaFlowChannelOptions o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.timeout_ms = 10000;
  args->status = lava_flow_channel_consumer_create(args->path, &o, &args->consumer);
  return NULL;
}

static LavaFlowFrameMetadata frame_metadata(uint64_t seq) {
  LavaFlowFrameMetadata m;
  memset(&m, 0, sizeof m);
  m.struct_size = sizeof m;
  m.len = 1000 + seq * 100;
  m.dtype_code = 2; /* float */
  m.dtype_bits = 32;
  m.dtype_lanes = 1;
  m.ndim = 2;
  m.shape[0] = 5;
  m.shape[1] = 50;
  m.has_strides = 1;
  m.strides[0] = 50;
  m.strides[1] = 1;
  m.timestamp = 123456789 + seq;
  m.user_len = 3;
  m.user[0] = 'l';
  m.user[1] = 'f';
  m.user[2] = (uint8_t)seq;
  return m;
}

static void check_frame(LavaFlowReadFrame *f, uint64_t seq) {
  uint64_t got_seq = 99;
  OK(lava_flow_read_frame_sequence(f, &got_seq));
  CHECK(got_seq == seq, "sequence %llu, expected %llu", (unsigned long long)got_seq, (unsigned long long)seq);
  LavaFlowFrameMetadata want = frame_metadata(seq), m;
  memset(&m, 0xEE, sizeof m);
  m.struct_size = sizeof m;
  OK(lava_flow_read_frame_metadata(f, &m));
  CHECK(m.len == want.len && m.dtype_code == 2 && m.dtype_bits == 32 && m.dtype_lanes == 1 && m.ndim == 2 &&
            m.shape[0] == 5 && m.shape[1] == 50 && m.has_strides == 1 && m.strides[0] == 50 && m.strides[1] == 1 &&
            m.timestamp == want.timestamp && m.user_len == 3 && !memcmp(m.user, want.user, 3) && m.shape[2] == 0 &&
            m.user[3] == 0 && m.reserved == 0,
        "frame %llu: metadata arrives as sent", (unsigned long long)seq);
  uint8_t want_bytes[2048], got[2048];
  fill_pattern(want_bytes, sizeof want_bytes);
  want_bytes[0] = (uint8_t)seq;
  memset(got, 0, sizeof got);
  OK(lava_flow_read_frame_read(f, 0, got, (size_t)want.len));
  CHECK(!memcmp(got, want_bytes, (size_t)want.len), "frame %llu: data arrives as written", (unsigned long long)seq);
  /* Wrong reads: past the frame, NULL out. */
  EXPECT(lava_flow_read_frame_read(f, 4096 - 8, got, 16), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_read_frame_read(f, UINT64_MAX, got, 16), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_read_frame_read(f, 0, NULL, 16), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_read_frame_metadata(f, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  LavaFlowFrameMetadata small = m;
  small.struct_size = 8;
  EXPECT(lava_flow_read_frame_metadata(f, &small), LAVA_FLOW_ERROR_STRUCT_SIZE);
}

/* Acquires, writes and sends frame `seq` (data: the pattern with its first byte = seq). */
static void send_frame(LavaFlowProducer *p, uint64_t seq) {
  LavaFlowWriteFrame *w = NULL;
  MUST(lava_flow_channel_producer_acquire(p, 5000, &w));
  uint64_t cap = 0;
  OK(lava_flow_write_frame_capacity(w, &cap));
  CHECK(cap == 4096, "capacity %llu", (unsigned long long)cap);
  uint8_t bytes[2048];
  fill_pattern(bytes, sizeof bytes);
  bytes[0] = (uint8_t)seq;
  LavaFlowFrameMetadata m = frame_metadata(seq);
  OK(lava_flow_write_frame_write(w, 0, bytes, (size_t)m.len));
  OK(lava_flow_write_frame_send(w, &m));
  EXPECT(lava_flow_write_frame_write(w, 0, bytes, 1), LAVA_FLOW_ERROR_INVALID_HANDLE); /* sent: consumed */
}

static void test_channel(void) {
  char path[128];
  snprintf(path, sizeof path, "/tmp/lava-flow-c-channel-%d.sock", (int)getpid());
  unlink(path);
  uint64_t live = lava_flow_live_handles();
  int fds = count_fds();
  LavaFlowChannelOptions o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.slots = 2;
  o.frame_size = 4096;
  o.memory = LAVA_FLOW_FRAME_MEMORY_HOST;
  o.sync = LAVA_FLOW_SYNC_MESSAGES;
  LavaFlowProducer *p = NULL;

  /* NULL pointers, wrong sizes and values: refused before anything is made. */
  EXPECT(lava_flow_channel_producer_create(NULL, &o, &p), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_channel_producer_create(path, &o, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_channel_consumer_create(NULL, NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_channel_producer_acquire(NULL, 0, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  LavaFlowWriteFrame *w = NULL;
  LavaFlowReadFrame *r = NULL;
  EXPECT(lava_flow_channel_producer_acquire(NULL, 0, &w), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_channel_producer_try_acquire(NULL, &w), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_channel_consumer_recv(NULL, 0, &r), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_write_frame_write(NULL, 0, "x", 1), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_write_frame_send(NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_read_frame_read(NULL, 0, NULL, 0), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_read_frame_metadata(NULL, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  OK(lava_flow_write_frame_discard(NULL));
  OK(lava_flow_read_frame_release(NULL));
  OK(lava_flow_channel_producer_destroy(NULL));
  OK(lava_flow_channel_consumer_destroy(NULL));
  LavaFlowChannelOptions bad = o;
  bad.struct_size = 8;
  EXPECT(lava_flow_channel_producer_create(path, &bad, &p), LAVA_FLOW_ERROR_STRUCT_SIZE);
  bad.struct_size = 0;
  LavaFlowConsumer *none = NULL;
  EXPECT(lava_flow_channel_consumer_create(path, &bad, &none), LAVA_FLOW_ERROR_STRUCT_SIZE);
  bad = o;
  bad.memory = 7;
  EXPECT(lava_flow_channel_producer_create(path, &bad, &p), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  bad = o;
  bad.slots = 1000;
  EXPECT(lava_flow_channel_producer_create(path, &bad, &p), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  CHECK(p == NULL && lava_flow_live_handles() == live, "failed creates made nothing");

  MUST(lava_flow_channel_producer_create(path, &o, &p));
  /* A consumer on a thread; the producer accepts it while waiting for it. */
  struct connect_args args = {path, NULL, LAVA_FLOW_ERROR_INTERNAL};
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, connect_consumer, &args) == 0, "pthread_create");
  OK(lava_flow_channel_producer_wait_for_consumers(p, 1, 10000));
  pthread_join(thread, NULL);
  CHECK(args.status == LAVA_FLOW_OK, "consumer_create: %s", lava_flow_status_name(args.status));
  LavaFlowConsumer *c = args.consumer;
  if (!c) {
    OK(lava_flow_channel_producer_destroy(p));
    return;
  }
  uint32_t consumers = 0, slots = 0;
  uint64_t frame_size = 0;
  OK(lava_flow_channel_producer_consumers(p, &consumers));
  CHECK(consumers == 1, "consumers %u", consumers);
  OK(lava_flow_channel_consumer_shape(c, &slots, &frame_size));
  CHECK(slots == 2 && frame_size == 4096, "shape %u x %llu", slots, (unsigned long long)frame_size);
  EXPECT(lava_flow_channel_consumer_recv(c, 0, &r), LAVA_FLOW_ERROR_TIMEOUT); /* nothing sent yet */
  /* A handle of the other end or kind is refused. */
  EXPECT(lava_flow_channel_consumer_recv((LavaFlowConsumer *)p, 0, &r), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_channel_producer_acquire((LavaFlowProducer *)c, 0, &w), LAVA_FLOW_ERROR_INVALID_HANDLE);

  /* A write frame: wrong writes, then discarded (its slot is free again). */
  MUST(lava_flow_channel_producer_try_acquire(p, &w));
  uint8_t big[100] = {0};
  EXPECT(lava_flow_write_frame_write(w, 4000, big, sizeof big), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_write_frame_write(w, UINT64_MAX, big, 2), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_write_frame_write(w, 0, NULL, 4), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_read_frame_read((LavaFlowReadFrame *)w, 0, NULL, 0), LAVA_FLOW_ERROR_INVALID_HANDLE);
  /* An end with a live frame is not destroyed: the call is refused and the end stays valid. */
  EXPECT(lava_flow_channel_producer_destroy(p), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  EXPECT(lava_flow_channel_producer_finish(p, 0), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  OK(lava_flow_write_frame_discard(w));
  EXPECT(lava_flow_write_frame_discard(w), LAVA_FLOW_ERROR_INVALID_HANDLE);

  /* send consumes its frame even when it refuses the metadata (the slot returns to the pool). */
  MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
  LavaFlowFrameMetadata m = frame_metadata(0);
  m.struct_size = 4;
  EXPECT(lava_flow_write_frame_send(w, &m), LAVA_FLOW_ERROR_STRUCT_SIZE);
  EXPECT(lava_flow_write_frame_discard(w), LAVA_FLOW_ERROR_INVALID_HANDLE);
  MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
  m = frame_metadata(0);
  m.len = 4097; /* longer than the frame */
  EXPECT(lava_flow_write_frame_send(w, &m), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
  m = frame_metadata(0);
  m.user_len = LAVA_FLOW_MAX_USER_DATA + 1;
  EXPECT(lava_flow_write_frame_send(w, &m), LAVA_FLOW_ERROR_INVALID_ARGUMENT);
  MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
  EXPECT(lava_flow_write_frame_send(w, NULL), LAVA_FLOW_ERROR_NULL_POINTER);
  EXPECT(lava_flow_channel_consumer_recv(c, 0, &r), LAVA_FLOW_ERROR_TIMEOUT); /* none of them was sent */

  /* Two frames fill both slots: try_acquire says FULL, acquire times out. */
  send_frame(p, 0);
  send_frame(p, 1);
  w = NULL;
  EXPECT(lava_flow_channel_producer_try_acquire(p, &w), LAVA_FLOW_ERROR_FULL);
  CHECK(w == NULL, "no frame on FULL");
  EXPECT(lava_flow_channel_producer_acquire(p, 50, &w), LAVA_FLOW_ERROR_TIMEOUT);

  /* The consumer receives both, in order, with their data and metadata. */
  LavaFlowReadFrame *r0 = NULL, *r1 = NULL;
  MUST(lava_flow_channel_consumer_recv(c, 5000, &r0));
  MUST(lava_flow_channel_consumer_recv(c, 5000, &r1));
  check_frame(r0, 0);
  check_frame(r1, 1);
  EXPECT(lava_flow_channel_consumer_destroy(c), LAVA_FLOW_ERROR_INVALID_ARGUMENT); /* frames are live */
  OK(lava_flow_read_frame_release(r0));
  EXPECT(lava_flow_read_frame_read(r0, 0, &slots, 1), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_read_frame_release(r0), LAVA_FLOW_ERROR_INVALID_HANDLE);
  /* A released slot is free again for the producer. */
  MUST(lava_flow_channel_producer_try_acquire(p, &w));
  OK(lava_flow_write_frame_discard(w));
  OK(lava_flow_read_frame_release(r1));

  /* A third frame, then the end of the stream: CLOSED after the frame, and again after that. */
  send_frame(p, 2);
  /* 0 ms: no waiting for frame 2's release (this thread holds the consumer); END follows it. */
  OK(lava_flow_channel_producer_finish(p, 0));
  EXPECT(lava_flow_channel_producer_acquire(p, 0, &w), LAVA_FLOW_ERROR_INVALID_ARGUMENT); /* finished */
  MUST(lava_flow_channel_consumer_recv(c, 5000, &r));
  check_frame(r, 2);
  OK(lava_flow_read_frame_release(r));
  r = NULL;
  EXPECT(lava_flow_channel_consumer_recv(c, 5000, &r), LAVA_FLOW_ERROR_CLOSED);
  CHECK(r == NULL, "no frame after the end");
  EXPECT(lava_flow_channel_consumer_recv(c, 100, &r), LAVA_FLOW_ERROR_CLOSED);
  OK(lava_flow_channel_producer_destroy(p));
  OK(lava_flow_channel_consumer_destroy(c));
  /* Destroyed: refused. */
  EXPECT(lava_flow_channel_producer_acquire(p, 0, &w), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_channel_consumer_recv(c, 0, &r), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_channel_producer_destroy(p), LAVA_FLOW_ERROR_INVALID_HANDLE);
  EXPECT(lava_flow_channel_consumer_destroy(c), LAVA_FLOW_ERROR_INVALID_HANDLE);
  CHECK(lava_flow_live_handles() == live, "channel handles left live: %llu (%llu before)",
        (unsigned long long)lava_flow_live_handles(), (unsigned long long)live);
  CHECK(count_fds() == fds, "channel fds left open: %d (%d before)", count_fds(), fds);
  CHECK(access(path, F_OK) != 0, "the producer removed its socket file");
}

/* A producer destroyed without finish also ends the stream cleanly; a consumer with nothing to
 * connect to times out. */
static void test_channel_destroy_ends_stream(void) {
  char path[128];
  snprintf(path, sizeof path, "/tmp/lava-flow-c-channel-end-%d.sock", (int)getpid());
  unlink(path);
  LavaFlowChannelOptions o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.slots = 1;
  o.frame_size = 64;
  o.memory = LAVA_FLOW_FRAME_MEMORY_HOST;
  o.timeout_ms = 100;
  LavaFlowConsumer *c = NULL;
  EXPECT(lava_flow_channel_consumer_create(path, &o, &c), LAVA_FLOW_ERROR_IO);
  LavaFlowProducer *p = NULL;
  MUST(lava_flow_channel_producer_create(path, &o, &p));
  struct connect_args args = {path, NULL, LAVA_FLOW_ERROR_INTERNAL};
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, connect_consumer, &args) == 0, "pthread_create");
  OK(lava_flow_channel_producer_wait_for_consumers(p, 1, 10000));
  pthread_join(thread, NULL);
  c = args.consumer;
  LavaFlowWriteFrame *w = NULL;
  MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
  OK(lava_flow_write_frame_write(w, 0, "end", 3));
  LavaFlowFrameMetadata m;
  memset(&m, 0, sizeof m);
  m.struct_size = sizeof m;
  OK(lava_flow_write_frame_send(w, &m)); /* len 0: the whole frame */
  OK(lava_flow_channel_producer_destroy(p));
  LavaFlowReadFrame *r = NULL;
  if (c) {
    MUST(lava_flow_channel_consumer_recv(c, 5000, &r));
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    OK(lava_flow_read_frame_metadata(r, &m));
    CHECK(m.len == 64 && m.dtype_code == 255 && m.dtype_bits == 8 && m.dtype_lanes == 1 && m.ndim == 0,
          "len 0 and a zero dtype mean the whole frame of bytes");
    char back[3] = {0};
    OK(lava_flow_read_frame_read(r, 0, back, 3));
    CHECK(!memcmp(back, "end", 3), "the frame sent before destroy arrives");
    OK(lava_flow_read_frame_release(r));
    EXPECT(lava_flow_channel_consumer_recv(c, 5000, &r), LAVA_FLOW_ERROR_CLOSED);
    OK(lava_flow_channel_consumer_destroy(c));
  }
}

/* One thread waits in recv (or acquire) while another uses frames of the same end: the waiting
 * call does not hold the end for its whole wait. */
struct wait_args {
  LavaFlowConsumer *consumer;
  LavaFlowProducer *producer;
  LavaFlowReadFrame *read;
  LavaFlowWriteFrame *write;
  LavaFlowStatus status;
};

static void *wait_recv(void *p) {
  struct wait_args *a = p;
  a->status = lava_flow_channel_consumer_recv(a->consumer, 5000, &a->read);
  return NULL;
}

static void *wait_acquire(void *p) {
  struct wait_args *a = p;
  a->status = lava_flow_channel_producer_acquire(a->producer, 5000, &a->write);
  return NULL;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void test_channel_threads(void) {
  char path[128];
  snprintf(path, sizeof path, "/tmp/lava-flow-c-channel-threads-%d.sock", (int)getpid());
  unlink(path);
  LavaFlowChannelOptions o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.slots = 1;
  o.frame_size = 256;
  o.memory = LAVA_FLOW_FRAME_MEMORY_HOST;
  LavaFlowProducer *p = NULL;
  MUST(lava_flow_channel_producer_create(path, &o, &p));
  struct connect_args args = {path, NULL, LAVA_FLOW_ERROR_INTERNAL};
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, connect_consumer, &args) == 0, "pthread_create");
  OK(lava_flow_channel_producer_wait_for_consumers(p, 1, 10000));
  pthread_join(thread, NULL);
  LavaFlowConsumer *c = args.consumer;
  if (!c) {
    OK(lava_flow_channel_producer_destroy(p));
    return;
  }
  LavaFlowFrameMetadata m;
  memset(&m, 0, sizeof m);
  m.struct_size = sizeof m;
  LavaFlowWriteFrame *w = NULL;
  LavaFlowReadFrame *r = NULL;
  MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
  OK(lava_flow_write_frame_send(w, &m));
  MUST(lava_flow_channel_consumer_recv(c, 5000, &r));

  /* A recv waiting on another thread; this one reads and releases the frame it holds. */
  struct wait_args a = {c, p, NULL, NULL, LAVA_FLOW_ERROR_INTERNAL};
  CHECK(pthread_create(&thread, NULL, wait_recv, &a) == 0, "pthread_create");
  usleep(100 * 1000);
  double t0 = now_s();
  uint8_t byte = 1;
  OK(lava_flow_read_frame_read(r, 0, &byte, 1));
  OK(lava_flow_read_frame_release(r));
  double took = now_s() - t0;
  CHECK(took < 1.0, "a read and a release took %.3f s while another thread waited in recv", took);
  MUST(lava_flow_channel_producer_acquire(p, 5000, &w)); /* the released slot */
  OK(lava_flow_write_frame_send(w, &m));
  pthread_join(thread, NULL);
  CHECK(a.status == LAVA_FLOW_OK, "the waiting recv got the next frame: %s", lava_flow_status_name(a.status));
  uint64_t seq = 0;
  if (a.status == LAVA_FLOW_OK) {
    OK(lava_flow_read_frame_sequence(a.read, &seq));
    CHECK(seq == 1, "sequence %llu", (unsigned long long)seq);
  }

  /* An acquire waiting on another thread (the only slot is held); this one writes and sends. */
  OK(lava_flow_read_frame_release(a.read));
  MUST(lava_flow_channel_producer_acquire(p, 5000, &w));
  a.status = LAVA_FLOW_ERROR_INTERNAL;
  CHECK(pthread_create(&thread, NULL, wait_acquire, &a) == 0, "pthread_create");
  usleep(100 * 1000);
  t0 = now_s();
  OK(lava_flow_write_frame_write(w, 0, "x", 1));
  OK(lava_flow_write_frame_send(w, &m));
  took = now_s() - t0;
  CHECK(took < 1.0, "a write and a send took %.3f s while another thread waited in acquire", took);
  MUST(lava_flow_channel_consumer_recv(c, 5000, &r));
  OK(lava_flow_read_frame_release(r)); /* frees the slot the waiting acquire gets */
  pthread_join(thread, NULL);
  CHECK(a.status == LAVA_FLOW_OK, "the waiting acquire got the slot: %s", lava_flow_status_name(a.status));
  if (a.status == LAVA_FLOW_OK) OK(lava_flow_write_frame_discard(a.write));
  OK(lava_flow_channel_producer_destroy(p));
  OK(lava_flow_channel_consumer_destroy(c));
}

/* Vulkan frames (the default memory): a frame written by copy into the producer's buffer is read
 * by copy out of the consumer's import of it. Skips where Vulkan cannot be opened. */
static void test_channel_vulkan(void) {
  char path[128];
  snprintf(path, sizeof path, "/tmp/lava-flow-c-channel-vk-%d.sock", (int)getpid());
  unlink(path);
  LavaFlowChannelOptions o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.slots = 2;
  o.frame_size = 8192;
  o.memory = LAVA_FLOW_FRAME_MEMORY_VULKAN_HOST_VISIBLE;
  LavaFlowProducer *p = NULL;
  LavaFlowStatus s = lava_flow_channel_producer_create(path, &o, &p);
  if (is_unavailable(s)) {
    skip_or_fail("vulkan", s);
    return;
  }
  MUST(s);
  struct connect_args args = {path, NULL, LAVA_FLOW_ERROR_INTERNAL};
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, connect_consumer, &args) == 0, "pthread_create");
  OK(lava_flow_channel_producer_wait_for_consumers(p, 1, 10000));
  pthread_join(thread, NULL);
  CHECK(args.status == LAVA_FLOW_OK, "consumer_create (Vulkan frames): %s", lava_flow_status_name(args.status));
  LavaFlowConsumer *c = args.consumer;
  if (c) {
    uint8_t bytes[8192], back[8192];
    fill_pattern(bytes, sizeof bytes);
    LavaFlowWriteFrame *w = NULL;
    MUST(lava_flow_channel_producer_acquire(p, 1000, &w));
    OK(lava_flow_write_frame_write(w, 0, bytes, sizeof bytes));
    LavaFlowFrameMetadata m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    OK(lava_flow_write_frame_send(w, &m));
    OK(lava_flow_channel_producer_finish(p, 0));
    LavaFlowReadFrame *r = NULL;
    MUST(lava_flow_channel_consumer_recv(c, 5000, &r));
    memset(back, 0, sizeof back);
    OK(lava_flow_read_frame_read(r, 0, back, sizeof back));
    CHECK(!memcmp(back, bytes, sizeof bytes), "a Vulkan frame arrives as written");
    OK(lava_flow_read_frame_release(r));
    EXPECT(lava_flow_channel_consumer_recv(c, 5000, &r), LAVA_FLOW_ERROR_CLOSED);
    OK(lava_flow_channel_consumer_destroy(c));
  }
  OK(lava_flow_channel_producer_destroy(p));
}

int main(void) {
  test_basics();
  test_null_pointers();
  test_handles();
  test_host_memory_and_fds();
  test_channel();
  test_channel_destroy_ends_stream();
  test_channel_threads();
  test_channel_vulkan();
  uint64_t live = lava_flow_live_handles();
  LavaFlowAllocator *a = NULL;
  LavaFlowStatus s = lava_flow_allocator_create(&a);
  if (s == LAVA_FLOW_OK) {
    test_struct_size(a);
    test_buffers(a);
    test_images(a);
    test_semaphores(a);
    test_ipc(a);
    test_cuda_opencl(a);
    OK(lava_flow_allocator_destroy(a));
    EXPECT(lava_flow_allocator_destroy(a), LAVA_FLOW_ERROR_INVALID_HANDLE);
  } else {
    skip_or_fail("vulkan", s);
  }
  CHECK(lava_flow_live_handles() == live, "handles left live: %llu (%llu before)",
        (unsigned long long)lava_flow_live_handles(), (unsigned long long)live);
  printf("RESULT: passed=%d skipped=%d failed=%d\n", passed, skipped, failed);
  return failed ? 1 : 0;
}
