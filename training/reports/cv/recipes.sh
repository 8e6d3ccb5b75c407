# The two recipes of selection-rule.md, sourced by run-gpu.sh and run-cpu.sh so that both routes train the same fits.
# `recipe NAME FOLD` prints that fit's arguments beyond Lite2, full fine-tuning and patience 10 (which both scripts
# pass); EPOCHS and BUDGET_EPOCHS only shrink them for smoke tests.
recipe() {
    case $1 in
        gpu) echo "--image-size 296 --seed $((80 + $2)) --epochs ${EPOCHS:-30}" ;;
        budget) echo "--image-size 296 --seed $((90 + $2)) --epochs ${BUDGET_EPOCHS:-17} --frozen-stages 2" ;;
        *) echo "recipe is gpu or budget, not $1" >&2; return 2 ;;
    esac
}
