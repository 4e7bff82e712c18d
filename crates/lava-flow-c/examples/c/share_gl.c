/*
 * Two processes share a GPU buffer and a texture through lava-flow's C API.
 *
 *   share_gl serve SOCKET     allocate a buffer and an image with Vulkan, fill a known pattern,
 *                             publish both on a Unix socket; exit once a client has taken them
 *   share_gl consume SOCKET   connect, import both into OpenGL (and the buffer into OpenCL and
 *                             CUDA where the machine has them), read them back through those APIs
 *                             and check the pattern
 *
 * `consume` works against `lava-flow serve --socket SOCKET --image 64x64` too: the names
 * ("pattern", "pattern.image") and the pattern (word i = i * 0x9E3779B1 ^ 0xA5A5A5A5, little
 * endian) are the CLI's.
 *
 * Build: cc -std=c11 share_gl.c $(pkg-config --cflags --libs lava-flow) -o share_gl
 * Each process ends with `RESULT: passed=N skipped=M` and exits 0 only if every check passed.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <lava_flow.h>

static int passed, skipped, failed;

/* Reports a failed call and returns 1 (for `if (fail(...)) goto done;`). */
static int check_call(LavaFlowStatus s, const char *what) {
  if (s == LAVA_FLOW_OK) return 0;
  fprintf(stderr, "FAIL: %s: %s: %s\n", what, lava_flow_status_name(s), lava_flow_last_error());
  failed++;
  return 1;
}

#define TRY(call) \
  if (check_call((call), #call)) goto done

static int required(const char *api) {
  const char *v = getenv("LAVA_FLOW_REQUIRE");
  if (!v) return 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", v);
  for (char *tok = strtok(buf, ", "); tok; tok = strtok(NULL, ", "))
    if (!strcasecmp(tok, api) || !strcasecmp(tok, "all")) return 1;
  return 0;
}

static uint32_t pattern_word(uint32_t i) { return (i * 0x9E3779B1u) ^ 0xA5A5A5A5u; }

static void fill_pattern(uint8_t *bytes, size_t len) {
  for (size_t i = 0; i + 4 <= len; i += 4) {
    uint32_t w = pattern_word((uint32_t)(i / 4));
    memcpy(bytes + i, &w, 4);
  }
}

/* Checks `len` bytes against the pattern; names the first wrong word. */
static void check_pattern(const char *what, const uint8_t *bytes, size_t len) {
  for (size_t i = 0; i + 4 <= len; i += 4) {
    uint32_t w;
    memcpy(&w, bytes + i, 4);
    if (w != pattern_word((uint32_t)(i / 4))) {
      fprintf(stderr, "FAIL: %s: word %zu is %08x, expected %08x\n", what, i / 4, w, pattern_word((uint32_t)(i / 4)));
      failed++;
      return;
    }
  }
  printf("ok: %s: %zu bytes hold the pattern\n", what, len);
  passed++;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int serve(const char *socket) {
  const size_t size = 1 << 20;
  const uint32_t width = 64, height = 64;
  LavaFlowAllocator *allocator = NULL;
  LavaFlowBuffer *buffer = NULL;
  LavaFlowImage *image = NULL;
  LavaFlowExport *buffer_export = NULL, *image_export = NULL;
  LavaFlowServer *server = NULL;
  uint8_t *bytes = malloc(size);
  fill_pattern(bytes, size);

  TRY(lava_flow_allocator_create(&allocator));
  /* Its own allocation (published buffers must not share a pooled block), with GL's slack. */
  LavaFlowBufferOptions bo = {.struct_size = sizeof bo,
                              .size = size,
                              .for_gl = 1,
                              .strategy = LAVA_FLOW_ALLOCATION_DEDICATED};
  TRY(lava_flow_buffer_create(allocator, &bo, &buffer));
  TRY(lava_flow_buffer_write(buffer, 0, bytes, size));
  TRY(lava_flow_buffer_export(buffer, &buffer_export));
  LavaFlowImageOptions io = {.struct_size = sizeof io,
                             .format = LAVA_FLOW_FORMAT_RGBA8_UNORM,
                             .width = width,
                             .height = height};
  TRY(lava_flow_image_create(allocator, &io, &image));
  TRY(lava_flow_image_upload(image, bytes, (size_t)width * height * 4));
  TRY(lava_flow_image_export(image, &image_export));

  TRY(lava_flow_server_create(socket, NULL, &server));
  TRY(lava_flow_server_publish(server, "pattern", buffer_export));
  TRY(lava_flow_server_publish(server, "pattern.image", image_export));
  printf("serving a %zu-byte buffer and a %ux%u image on %s\n", size, width, height, socket);
  fflush(stdout);

  /* Until a client has taken both objects and hung up (or 30 s). */
  LavaFlowServerStats stats = {.struct_size = sizeof stats};
  double deadline = now() + 30.0;
  for (;;) {
    TRY(lava_flow_server_stats(server, &stats));
    if (stats.objects_sent >= 2 && stats.connections_closed >= 1) break;
    if (now() > deadline) {
      fprintf(stderr, "FAIL: no client took both objects within 30 s (%llu sent)\n",
              (unsigned long long)stats.objects_sent);
      failed++;
      goto done;
    }
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  printf("ok: a client took %llu objects\n", (unsigned long long)stats.objects_sent);
  passed++;

done:
  lava_flow_server_destroy(server);
  lava_flow_export_destroy(image_export);
  lava_flow_export_destroy(buffer_export);
  lava_flow_image_destroy(image);
  lava_flow_buffer_destroy(buffer);
  lava_flow_allocator_destroy(allocator);
  free(bytes);
  printf("RESULT: passed=%d skipped=%d failed=%d\n", passed, skipped, failed);
  return failed ? 1 : 0;
}

static void consume_opencl(LavaFlowExport *buffer_export, const LavaFlowBufferDesc *desc) {
  LavaFlowOpenClContext *cl = NULL;
  LavaFlowOpenClBuffer *clb = NULL;
  uint8_t *bytes = NULL;
  LavaFlowStatus s = lava_flow_opencl_context_create(&desc->device, &cl);
  if (s == LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE || s == LAVA_FLOW_ERROR_DEVICE_NOT_FOUND) {
    if (required("opencl")) {
      check_call(s, "lava_flow_opencl_context_create (LAVA_FLOW_REQUIRE names opencl)");
    } else {
      printf("SKIPPED (opencl unavailable): %s\n", lava_flow_last_error());
      skipped++;
    }
    return;
  }
  TRY(s);
  TRY(lava_flow_opencl_import_buffer(cl, buffer_export, &clb));
  bytes = malloc(desc->size);
  TRY(lava_flow_opencl_buffer_read(clb, 0, bytes, desc->size));
  check_pattern("OpenCL buffer", bytes, desc->size);
done:
  free(bytes);
  lava_flow_opencl_buffer_destroy(clb);
  lava_flow_opencl_context_destroy(cl);
}

static void consume_cuda(LavaFlowExport *buffer_export, const LavaFlowBufferDesc *desc) {
  LavaFlowCudaDevice *cuda = NULL;
  LavaFlowCudaBuffer *cb = NULL;
  uint8_t *bytes = NULL;
  LavaFlowStatus s = lava_flow_cuda_device_for_identity(&desc->device, &cuda);
  if (s == LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE || s == LAVA_FLOW_ERROR_DEVICE_NOT_FOUND) {
    if (required("cuda")) {
      check_call(s, "lava_flow_cuda_device_for_identity (LAVA_FLOW_REQUIRE names cuda)");
    } else {
      printf("SKIPPED (cuda unavailable): %s\n", lava_flow_last_error());
      skipped++;
    }
    return;
  }
  TRY(s);
  TRY(lava_flow_cuda_import_buffer(cuda, buffer_export, &cb));
  uint64_t pointer = 0, size = 0;
  TRY(lava_flow_cuda_buffer_pointer(cb, &pointer, &size));
  bytes = malloc(size);
  TRY(lava_flow_cuda_buffer_read(cb, bytes, size));
  printf("CUDA device pointer 0x%llx:\n", (unsigned long long)pointer);
  check_pattern("CUDA buffer", bytes, size);
done:
  free(bytes);
  lava_flow_cuda_buffer_destroy(cb);
  lava_flow_cuda_device_destroy(cuda);
}

static int consume(const char *socket) {
  LavaFlowClient *client = NULL;
  LavaFlowExport *buffer_export = NULL, *image_export = NULL;
  LavaFlowGlContext *gl = NULL;
  LavaFlowGlBuffer *gl_buffer = NULL;
  LavaFlowGlTexture *gl_texture = NULL;
  uint8_t *bytes = NULL, *texels = NULL;

  TRY(lava_flow_client_connect(socket, 10000, &client));
  TRY(lava_flow_client_wait_for(client, "pattern", 10000, &buffer_export));
  TRY(lava_flow_client_wait_for(client, "pattern.image", 10000, &image_export));
  /* Both objects are ours now: the connection can go. */
  lava_flow_client_destroy(client);
  client = NULL;

  LavaFlowBufferDesc desc = {.struct_size = sizeof desc};
  TRY(lava_flow_export_buffer_desc(buffer_export, &desc));
  printf("received a %llu-byte buffer at offset %llu of a %llu-byte allocation\n", (unsigned long long)desc.size,
         (unsigned long long)desc.offset, (unsigned long long)desc.allocation_size);

  /* GL on the exporter's device (its UUIDs are in the description). */
  LavaFlowStatus s = lava_flow_gl_context_create(&desc.device, &gl);
  if ((s == LAVA_FLOW_ERROR_LIBRARY_UNAVAILABLE || s == LAVA_FLOW_ERROR_DEVICE_NOT_FOUND) && !required("gl")) {
    printf("SKIPPED (gl unavailable): %s\n", lava_flow_last_error());
    skipped++;
  } else {
    TRY(s);
    TRY(lava_flow_gl_import_buffer(gl, buffer_export, &gl_buffer));
    uint32_t name = 0;
    TRY(lava_flow_gl_buffer_name(gl_buffer, &name));
    bytes = malloc(desc.size);
    TRY(lava_flow_gl_buffer_read(gl_buffer, 0, bytes, desc.size));
    printf("GL buffer object %u:\n", name);
    check_pattern("GL buffer", bytes, desc.size);

    TRY(lava_flow_gl_import_texture(gl, image_export, &gl_texture));
    uint64_t packed = 0;
    TRY(lava_flow_gl_texture_packed_size(gl_texture, &packed));
    texels = malloc(packed);
    TRY(lava_flow_gl_texture_read(gl_texture, texels, packed));
    check_pattern("GL texture", texels, packed);
  }
  consume_opencl(buffer_export, &desc);
  consume_cuda(buffer_export, &desc);

done:
  free(bytes);
  free(texels);
  lava_flow_gl_texture_destroy(gl_texture);
  lava_flow_gl_buffer_destroy(gl_buffer);
  lava_flow_gl_context_destroy(gl);
  lava_flow_export_destroy(image_export);
  lava_flow_export_destroy(buffer_export);
  lava_flow_client_destroy(client);
  printf("RESULT: passed=%d skipped=%d failed=%d\n", passed, skipped, failed);
  return failed ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "serve")) return serve(argv[2]);
  if (argc == 3 && !strcmp(argv[1], "consume")) return consume(argv[2]);
  fprintf(stderr, "usage: %s serve SOCKET | consume SOCKET\n", argv[0]);
  return 2;
}
