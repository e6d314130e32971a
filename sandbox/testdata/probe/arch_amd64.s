#include "textflag.h"

// func int80(trap, a1, a2, a3 uintptr) (r uintptr)
// A syscall through the ia32 compat entry (int $0x80): the seccomp filter
// sees AUDIT_ARCH_I386 and the 32-bit syscall table.
TEXT ·int80(SB),NOSPLIT,$0-40
	MOVQ trap+0(FP), AX
	MOVQ a1+8(FP), BX
	MOVQ a2+16(FP), CX
	MOVQ a3+24(FP), DX
	BYTE $0xCD; BYTE $0x80
	MOVQ AX, r+32(FP)
	RET
