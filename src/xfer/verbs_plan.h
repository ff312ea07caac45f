/* verbs_plan.h - the decisions of the verbs backend that need no device:
 * which access a region is registered with, how an op becomes work requests,
 * send-queue and receive-credit accounting, the checks on the stream of
 * frames a link receives, the loss detector of the unreliable path, and the
 * choice of a GID. Pure functions on plain structs, built and unit-tested
 * everywhere (no libibverbs here); verbs.c maps them onto ibv_* calls.
 *
 * Invariants the backend relies on
 *   - A link never has more than sq_cap work requests posted and not yet
 *     completed, and never sends more frames / writes-with-immediate than
 *     the peer has receive buffers posted for (credits): on UC an
 *     unmatched SEND is dropped silently, on RC it would stall in RNR
 *     retries.
 *   - Work requests of one op are produced in order; those of different
 *     ops on one link are never interleaved (the receiver checks that). */
#ifndef CM_XFER_VERBS_PLAN_H
#define CM_XFER_VERBS_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "xfer/backend.h"

/* ---- memory registration ---- */

enum { CM_VERBS_ACC_LOCAL_WRITE = 1, CM_VERBS_ACC_REMOTE_WRITE = 2 };

/* Access for a region with cm_xfer_mr_flags `flags`: remote write (which
 * needs local write with it) only when the region asks for it and the link
 * type lands writes one-sided (RC); otherwise none at all, so read-only
 * memory can be registered as a source. */
unsigned cm_verbs_mr_access(unsigned flags, int one_sided);

/* ---- ops as work requests ---- */

enum {
    CM_VERBS_JOB_RDMA_WRITE = 1, /* RC write_imm: one RDMA write per segment */
    CM_VERBS_JOB_FRAMED_WRITE,   /* UC write_imm: SENDs of write frames */
    CM_VERBS_JOB_MSG,            /* send: SENDs of message fragments */
};
enum { CM_VERBS_WR_WRITE = 1, CM_VERBS_WR_WRITE_IMM, CM_VERBS_WR_SEND };

typedef struct cm_verbs_wr_plan {
    int opcode;       /* CM_VERBS_WR_* */
    uint32_t seg;     /* source segment */
    uint64_t seg_off; /* offset of the bytes in that segment */
    uint32_t bytes;
    uint64_t dst_off; /* offset in the peer's region (writes) or in the message */
    int credit;       /* uses one of the peer's posted receives */
    int last;         /* the op's last work request */
} cm_verbs_wr_plan;

typedef struct cm_verbs_cursor {
    int kind;
    uint32_t index, total; /* next work request, work requests of the op */
    uint32_t seg;
    uint64_t off;
    uint32_t frame_payload;
    int empty;             /* no bytes at all: one empty frame / write */
} cm_verbs_cursor;

/* Prepares the work requests of an op: kind CM_VERBS_JOB_*, its segments,
 * and the payload bytes one frame carries (the peer's frame size less the
 * header; unused for RDMA writes). CM_ERANGE when a write needs more than
 * CM_XFER_MAX_SEGS_PER_WRITE frames, CM_EINVAL for nonsense arguments. */
int cm_verbs_plan_init(cm_verbs_cursor *c, int kind, const cm_xfer_seg *segs, int n_segs, uint32_t frame_payload);

/* The next work request into *out: 1, or 0 when all were produced. */
int cm_verbs_plan_next(cm_verbs_cursor *c, const cm_xfer_seg *segs, int n_segs, cm_verbs_wr_plan *out);

/* ---- flow control of one link ---- */

typedef struct cm_verbs_fc {
    uint32_t sq_cap, sq_used;       /* send queue: capacity, posted and not completed */
    uint32_t credits, credits_max;  /* peer receives we may still use; its receive depth */
} cm_verbs_fc;

void cm_verbs_fc_init(cm_verbs_fc *fc, uint32_t sq_cap, uint32_t peer_rx_depth);
int cm_verbs_fc_can_post(const cm_verbs_fc *fc, int credit);
void cm_verbs_fc_posted(cm_verbs_fc *fc, int credit);
/* n send completions arrived. CM_EINVAL if more than were posted. */
int cm_verbs_fc_sq_done(cm_verbs_fc *fc, uint32_t n);
/* The peer re-posted n receives. CM_EFORMAT when that would exceed its
 * receive depth (it returned credits it never had). */
int cm_verbs_fc_credit_add(cm_verbs_fc *fc, uint32_t n);

/* Credits the receiving side owes: returned in batches so that the side
 * channel carries one record per `batch` receives, not one per frame. */
typedef struct cm_verbs_owed {
    uint32_t owed, batch;
} cm_verbs_owed;

void cm_verbs_owed_init(cm_verbs_owed *o, uint32_t rx_depth);
/* n receives were re-posted: the credits to send now (0: keep owing). */
uint32_t cm_verbs_owed_add(cm_verbs_owed *o, uint32_t n);
/* Everything owed (for a periodic flush), leaving nothing owed. */
uint32_t cm_verbs_owed_take(cm_verbs_owed *o);

/* ---- the frames one link receives ---- */

typedef struct cm_verbs_rx_stream {
    uint32_t next_seq;  /* frame sequence due */
    uint32_t next_msg;  /* message sequence due */
    int active;         /* 0, or CM_VERBS_FRAME_WRITE / _MSG in progress */
    uint64_t id;
    uint32_t total;     /* write: frames; message: bytes */
    uint32_t got;       /* write: frames; message: bytes */
    uint32_t region, imm;
} cm_verbs_rx_stream;

struct cm_verbs_frame;

/* Checks a decoded frame against the stream: the frame sequence, and that it
 * continues the write or message in progress (same id, totals, region and
 * imm; message fragments contiguous) or starts a new one (a message with
 * the next message sequence at offset 0). *first is 1 for the first frame
 * of a write or message, *done 1 for its last. CM_EFORMAT with the reason;
 * the stream is then unusable (the peer must fail). */
int cm_verbs_rx_frame(cm_verbs_rx_stream *s, const struct cm_verbs_frame *f, int *first, int *done);

/* ---- loss detection on unreliable links ---- */

typedef struct cm_verbs_loss {
    int armed;
    uint32_t target;      /* frames the peer said it had sent */
    uint64_t deadline_ns; /* by when they must have arrived */
} cm_verbs_loss;

/* A heartbeat said the peer has sent `sent` frames; `received` arrived so
 * far. When behind (and not already watching), watch until now + grace. */
void cm_verbs_loss_report(cm_verbs_loss *l, uint32_t sent, uint32_t received, uint64_t now_ns, uint64_t grace_ns);
/* CM_OK, or CM_EPEER when the frames watched for did not come in time. */
int cm_verbs_loss_check(cm_verbs_loss *l, uint32_t received, uint64_t now_ns);

/* ---- addressing ---- */

/* The GID index to use among n GIDs: the IPv4-mapped GID of `want_v4`
 * (the side channel's local IPv4 address, network order; NULL if none),
 * RoCE v2 before v1 when `v2` says (1 v2, 0 not, -1 unknown; may be NULL);
 * else any IPv4-mapped GID (v2 first); else the first non-zero GID; -1 when
 * all are zero. */
int cm_verbs_gid_pick(const uint8_t (*gids)[16], const int *v2, int n, const uint8_t *want_v4);

/* Path MTU code (1..5) both ends can use. */
static inline int cm_verbs_mtu_pick(int local, int remote) { return local < remote ? local : remote; }

#endif
