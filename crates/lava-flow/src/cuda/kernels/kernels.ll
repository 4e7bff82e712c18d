; CUDA kernels of lava-flow's CUDA importer, in LLVM IR for the NVPTX back end.
; Regenerate kernels.ptx with: llc -march=nvptx64 -mcpu=sm_75 -mattr=+ptx70 -O3 kernels.ll -o kernels.ptx
target datalayout = "e-i64:64-i128:128-v16:16-v32:32-n16:32:64"
target triple = "nvptx64-nvidia-cuda"

declare i32 @llvm.nvvm.read.ptx.sreg.tid.x()
declare i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
declare i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
declare i32 @llvm.nvvm.read.ptx.sreg.nctaid.x()

; Grid-stride copy of `n` 16-byte vectors from `src` to `dst`.
define void @lf_copy_v4(i8* %dst_generic, i8* %src_generic, i64 %n) {
entry:
  %dst_g = addrspacecast i8* %dst_generic to i8 addrspace(1)*
  %src_g = addrspacecast i8* %src_generic to i8 addrspace(1)*
  %dst = bitcast i8 addrspace(1)* %dst_g to <4 x i32> addrspace(1)*
  %src = bitcast i8 addrspace(1)* %src_g to <4 x i32> addrspace(1)*
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %ctaid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %nctaid = call i32 @llvm.nvvm.read.ptx.sreg.nctaid.x()
  %tid64 = zext i32 %tid to i64
  %ntid64 = zext i32 %ntid to i64
  %ctaid64 = zext i32 %ctaid to i64
  %nctaid64 = zext i32 %nctaid to i64
  %base = mul i64 %ctaid64, %ntid64
  %start = add i64 %base, %tid64
  %stride = mul i64 %nctaid64, %ntid64
  %empty = icmp uge i64 %start, %n
  br i1 %empty, label %done, label %loop

loop:
  %i = phi i64 [ %start, %entry ], [ %next, %loop ]
  %sp = getelementptr inbounds <4 x i32>, <4 x i32> addrspace(1)* %src, i64 %i
  %dp = getelementptr inbounds <4 x i32>, <4 x i32> addrspace(1)* %dst, i64 %i
  %v = load <4 x i32>, <4 x i32> addrspace(1)* %sp, align 16
  store <4 x i32> %v, <4 x i32> addrspace(1)* %dp, align 16
  %next = add i64 %i, %stride
  %more = icmp ult i64 %next, %n
  br i1 %more, label %loop, label %done

done:
  ret void
}

; buf[i] = buf[i] * 3 + add for i < n (u32 elements), one thread per element.
define void @lf_mul3_add(i8* %buf_generic, i32 %n, i32 %add) {
entry:
  %buf_g = addrspacecast i8* %buf_generic to i8 addrspace(1)*
  %buf = bitcast i8 addrspace(1)* %buf_g to i32 addrspace(1)*
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %ctaid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %base = mul i32 %ctaid, %ntid
  %i = add i32 %base, %tid
  %out = icmp uge i32 %i, %n
  br i1 %out, label %done, label %work

work:
  %i64 = zext i32 %i to i64
  %p = getelementptr inbounds i32, i32 addrspace(1)* %buf, i64 %i64
  %x = load i32, i32 addrspace(1)* %p, align 4
  %x3 = mul i32 %x, 3
  %y = add i32 %x3, %add
  store i32 %y, i32 addrspace(1)* %p, align 4
  br label %done

done:
  ret void
}

!nvvm.annotations = !{!0, !1}
!0 = !{void (i8*, i8*, i64)* @lf_copy_v4, !"kernel", i32 1}
!1 = !{void (i8*, i32, i32)* @lf_mul3_add, !"kernel", i32 1}
