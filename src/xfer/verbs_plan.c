/* verbs_plan.c - the device-free decisions of the verbs backend (see
 * verbs_plan.h): registration access, op -> work requests, send-queue and
 * credit accounting, receive-stream checks, loss detection, GID choice. */
#include "xfer/verbs_plan.h"

#include <string.h>

#include "base/status.h"
#include "xfer/verbs_proto.h"

unsigned cm_verbs_mr_access(unsigned flags, int one_sided) {
    if (one_sided && (flags & CM_XFER_MR_REMOTE_WRITE)) return CM_VERBS_ACC_LOCAL_WRITE | CM_VERBS_ACC_REMOTE_WRITE;
    return 0;
}

/* ---- ops as work requests ---- */

int cm_verbs_plan_init(cm_verbs_cursor *c, int kind, const cm_xfer_seg *segs, int n_segs, uint32_t frame_payload) {
    memset(c, 0, sizeof *c);
    c->kind = kind;
    if (n_segs < 1 || !segs) return cm_errorf(CM_EINVAL, "verbs: an op without segments");
    if (kind == CM_VERBS_JOB_RDMA_WRITE) {
        if ((uint32_t)n_segs > CM_XFER_MAX_SEGS_PER_WRITE)
            return cm_errorf(CM_ERANGE, "verbs: write of %d segments", n_segs);
        c->total = (uint32_t)n_segs;
        return CM_OK;
    }
    if (kind != CM_VERBS_JOB_FRAMED_WRITE && kind != CM_VERBS_JOB_MSG)
        return cm_errorf(CM_EINVAL, "verbs: job kind %d", kind);
    if (kind == CM_VERBS_JOB_MSG && n_segs != 1) return cm_errorf(CM_EINVAL, "verbs: a message of %d segments", n_segs);
    if (frame_payload == 0) return cm_errorf(CM_EINVAL, "verbs: frames without room for payload");
    c->frame_payload = frame_payload;
    uint64_t frames = 0;
    for (int i = 0; i < n_segs; i++) frames += (segs[i].bytes + (uint64_t)frame_payload - 1) / frame_payload;
    if (frames == 0) {
        c->empty = 1;
        frames = 1;
    }
    if (frames > CM_XFER_MAX_SEGS_PER_WRITE)
        return cm_errorf(CM_ERANGE, "verbs: %s needs %llu frames of %u bytes (at most %u)",
                         kind == CM_VERBS_JOB_MSG ? "message" : "write", (unsigned long long)frames, frame_payload,
                         CM_XFER_MAX_SEGS_PER_WRITE);
    c->total = (uint32_t)frames;
    return CM_OK;
}

int cm_verbs_plan_next(cm_verbs_cursor *c, const cm_xfer_seg *segs, int n_segs, cm_verbs_wr_plan *out) {
    if (c->index >= c->total) return 0;
    memset(out, 0, sizeof *out);
    if (c->kind == CM_VERBS_JOB_RDMA_WRITE) {
        /* RC: every segment an RDMA write; the last carries the immediate
         * (and uses one of the peer's receives): the QP executes them in
         * order, so its completion at the peer means all landed. */
        uint32_t i = c->index++;
        out->seg = i;
        out->bytes = segs[i].bytes;
        out->dst_off = segs[i].dst_off;
        out->last = c->index == c->total;
        out->opcode = out->last ? CM_VERBS_WR_WRITE_IMM : CM_VERBS_WR_WRITE;
        out->credit = out->last;
        return 1;
    }
    out->opcode = CM_VERBS_WR_SEND;
    out->credit = 1;
    if (c->empty) {
        out->dst_off = c->kind == CM_VERBS_JOB_FRAMED_WRITE ? segs[0].dst_off : 0;
        c->index++;
        out->last = 1;
        return 1;
    }
    while (c->seg < (uint32_t)n_segs && c->off >= segs[c->seg].bytes) {
        c->seg++;
        c->off = 0;
    }
    if (c->seg >= (uint32_t)n_segs) return 0; /* cannot happen: total counted these frames */
    uint64_t left = segs[c->seg].bytes - c->off;
    uint32_t len = left < c->frame_payload ? (uint32_t)left : c->frame_payload;
    out->seg = c->seg;
    out->seg_off = c->off;
    out->bytes = len;
    out->dst_off = c->kind == CM_VERBS_JOB_FRAMED_WRITE ? segs[c->seg].dst_off + c->off : c->off;
    c->off += len;
    c->index++;
    out->last = c->index == c->total;
    return 1;
}

/* ---- flow control ---- */

void cm_verbs_fc_init(cm_verbs_fc *fc, uint32_t sq_cap, uint32_t peer_rx_depth) {
    fc->sq_cap = sq_cap;
    fc->sq_used = 0;
    fc->credits = fc->credits_max = peer_rx_depth;
}

int cm_verbs_fc_can_post(const cm_verbs_fc *fc, int credit) {
    return fc->sq_used < fc->sq_cap && (!credit || fc->credits > 0);
}

void cm_verbs_fc_posted(cm_verbs_fc *fc, int credit) {
    fc->sq_used++;
    if (credit) fc->credits--;
}

int cm_verbs_fc_sq_done(cm_verbs_fc *fc, uint32_t n) {
    if (n > fc->sq_used) return cm_errorf(CM_EINVAL, "verbs: %u send completions for %u posted", n, fc->sq_used);
    fc->sq_used -= n;
    return CM_OK;
}

int cm_verbs_fc_credit_add(cm_verbs_fc *fc, uint32_t n) {
    if (n > fc->credits_max - fc->credits)
        return cm_errorf(CM_EFORMAT, "verbs: peer returned %u receive credits, only %u were in use", n,
                         fc->credits_max - fc->credits);
    fc->credits += n;
    return CM_OK;
}

void cm_verbs_owed_init(cm_verbs_owed *o, uint32_t rx_depth) {
    o->owed = 0;
    o->batch = rx_depth / 8 ? rx_depth / 8 : 1;
}

uint32_t cm_verbs_owed_add(cm_verbs_owed *o, uint32_t n) {
    o->owed += n;
    if (o->owed < o->batch) return 0;
    return cm_verbs_owed_take(o);
}

uint32_t cm_verbs_owed_take(cm_verbs_owed *o) {
    uint32_t n = o->owed;
    o->owed = 0;
    return n;
}

/* ---- receive stream ---- */

int cm_verbs_rx_frame(cm_verbs_rx_stream *s, const cm_verbs_frame *f, int *first, int *done) {
    *first = *done = 0;
    if (f->seq != s->next_seq)
        return cm_errorf(CM_EFORMAT, "verbs: frame %u arrived where %u was due (a frame was lost or repeated)", f->seq,
                         s->next_seq);
    s->next_seq++;
    if (!s->active) {
        if (f->type == CM_VERBS_FRAME_WRITE) {
            s->id = f->id;
            s->total = f->n_segs;
            s->region = f->region_or_total;
            s->imm = f->imm;
        } else {
            if (f->id != s->next_msg)
                return cm_errorf(CM_EFORMAT, "verbs: message %llu arrived where %u was due", (unsigned long long)f->id,
                                 s->next_msg);
            if (f->offset != 0) return cm_errorf(CM_EFORMAT, "verbs: message %u starts at offset %llu", s->next_msg,
                                                 (unsigned long long)f->offset);
            s->id = f->id;
            s->total = f->region_or_total;
        }
        s->active = f->type;
        s->got = 0;
        *first = 1;
    } else if (f->type != s->active || f->id != s->id) {
        return cm_errorf(CM_EFORMAT, "verbs: a frame of %s %llu inside %s %llu",
                         f->type == CM_VERBS_FRAME_WRITE ? "write" : "message", (unsigned long long)f->id,
                         s->active == CM_VERBS_FRAME_WRITE ? "write" : "message", (unsigned long long)s->id);
    } else if (f->type == CM_VERBS_FRAME_WRITE) {
        if (f->n_segs != s->total || f->region_or_total != s->region || f->imm != s->imm)
            return cm_errorf(CM_EFORMAT, "verbs: frames of write %llu disagree on its region, imm or size",
                             (unsigned long long)s->id);
    } else {
        if (f->region_or_total != s->total || f->offset != s->got)
            return cm_errorf(CM_EFORMAT, "verbs: fragment at %llu of message %llu where %u was due",
                             (unsigned long long)f->offset, (unsigned long long)s->id, s->got);
    }
    if (f->type == CM_VERBS_FRAME_WRITE) {
        s->got++;
    } else {
        /* an empty fragment only for an empty message: a stream of them
         * would otherwise never end */
        if (f->payload_bytes == 0 && s->total != 0)
            return cm_errorf(CM_EFORMAT, "verbs: empty fragment of a %u-byte message", s->total);
        s->got += f->payload_bytes; /* frame decode bounded offset + payload by total */
    }
    if (s->got == s->total) {
        if (s->active == CM_VERBS_FRAME_MSG) s->next_msg++;
        s->active = 0;
        *done = 1;
    }
    return CM_OK;
}

/* ---- loss detection ---- */

void cm_verbs_loss_report(cm_verbs_loss *l, uint32_t sent, uint32_t received, uint64_t now_ns, uint64_t grace_ns) {
    if (l->armed) return; /* one watch at a time; a later report is checked after it */
    if ((int32_t)(sent - received) <= 0) return;
    l->armed = 1;
    l->target = sent;
    l->deadline_ns = now_ns + grace_ns;
}

int cm_verbs_loss_check(cm_verbs_loss *l, uint32_t received, uint64_t now_ns) {
    if (!l->armed) return CM_OK;
    if ((int32_t)(l->target - received) <= 0) {
        l->armed = 0;
        return CM_OK;
    }
    if (now_ns < l->deadline_ns) return CM_OK;
    l->armed = 0;
    return cm_errorf(CM_EPEER, "verbs: the peer sent %u frames, %u arrived (frames lost on an unreliable link)",
                     l->target, received);
}

/* ---- addressing ---- */

static int gid_zero(const uint8_t g[16]) {
    for (int i = 0; i < 16; i++)
        if (g[i]) return 0;
    return 1;
}

/* ::ffff:a.b.c.d */
static int gid_v4(const uint8_t g[16]) {
    static const uint8_t pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return !memcmp(g, pre, 12);
}

int cm_verbs_gid_pick(const uint8_t (*gids)[16], const int *v2, int n, const uint8_t *want_v4) {
    int best = -1, best_score = 0;
    for (int i = 0; i < n; i++) {
        if (gid_zero(gids[i])) continue;
        int score = 1;
        if (gid_v4(gids[i])) {
            score = 3;
            if (want_v4 && !memcmp(gids[i] + 12, want_v4, 4)) score = 5;
            if (v2 && v2[i] == 1) score++;
        }
        if (score > best_score) best = i, best_score = score;
    }
    return best;
}
