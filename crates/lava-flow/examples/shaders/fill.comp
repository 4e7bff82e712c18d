#version 450
// Writes round r's input into the shared buffer: values[i] = i * 2654435761 + r.
// Build: glslangValidator -V fill.comp -o fill.spv
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) buffer Data { uint values[]; };
layout(push_constant) uniform Push { uint round_index; uint count; } push;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < push.count) {
        values[i] = i * 2654435761u + push.round_index;
    }
}
